"""The rate limit service the gateways' Envoys ask about ModelClients' limits
(envoyproxy/ratelimit), built from its Go module at a pinned version and cached outside the
repository, like the local cluster's binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pins import CACHE_ROOT

# envoyproxy/ratelimit tags no releases: a pseudo-version of its main branch.
VERSION = "v1.4.1-0.20260122083618-3fb702589d36"
BINARY = CACHE_ROOT / f"ratelimit-{VERSION}" / "ratelimit"


def build() -> Path:
    """The rate limit service (envoyproxy/ratelimit) the gateways' Envoys ask about clients'
    limits, from its Go module at a pinned version. Its go.mod replaces modules, which `go
    install pkg@version` refuses, so it is built inside a copy of the downloaded module."""
    if not BINARY.is_file():
        print(f"building ratelimit {VERSION} into {BINARY.parent} (once)", file=sys.stderr)
        downloaded = subprocess.run(
            ["go", "mod", "download", "-json", f"github.com/envoyproxy/ratelimit@{VERSION}"],
            check=True, capture_output=True, text=True,
            cwd=tempfile.gettempdir(),  # outside any module: the version is the one named here
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "ratelimit"
            shutil.copytree(json.loads(downloaded.stdout)["Dir"], source)
            source.chmod(0o755)
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(BINARY),
                 "./src/service_cmd"],
                cwd=source, check=True, env={**os.environ, "CGO_ENABLED": "0"},
            )  # fmt: skip
    return BINARY
