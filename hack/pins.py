"""The Kubernetes release the local cluster is built from, and where local tooling keeps what
it builds (outside the repository; SWITCHYARD_CACHE moves it)."""

from __future__ import annotations

import os
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
CACHE_ROOT = Path(os.environ.get("SWITCHYARD_CACHE", Path.home() / ".cache" / "switchyard"))
