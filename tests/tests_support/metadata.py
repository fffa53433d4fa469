"""Where the session's GKE metadata server is: google-auth reads GCE_METADATA_HOST once, when
it is first imported, so the address is fixed before anything imports it (tests/conftest.py
imports this first) and the Vertex fake that serves it binds this port when a test needs it."""

from __future__ import annotations

import os

from ports import free_port

METADATA_PORT = free_port()
os.environ["GCE_METADATA_HOST"] = f"127.0.0.1:{METADATA_PORT}"
