"""Real processes for the demo and the end-to-end tests: fake providers and a local Envoy,
both started with the `switchyard` command users run, and a small HTTP load client."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ports import free_port

if TYPE_CHECKING:
    from switchyard.fakes.bedrock import AwsCredentials

SWITCHYARD = shutil.which("switchyard", path=str(Path(sys.executable).parent)) or "switchyard"
REPLY_PORT = re.compile(r"on port (\d+)\.")


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float = 20, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate `process`, killing it if it has not ended within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chart_image_values(
    operator_image: str, envoy_image: str, ratelimit_image: str, redis_image: str
) -> list[str]:
    """`helm install` flags that run the operator, its gateways, the rate limit service and
    its Redis from images the node already has (imported, as there is no registry)."""
    repository, _, tag = operator_image.rpartition(":")
    return [
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--set", f"envoy.image={envoy_image}",
        "--set", f"rateLimits.image={ratelimit_image}",
        "--set", f"rateLimits.redis.image={redis_image}",
    ]  # fmt: skip


class FakeProcess:
    """`switchyard fake-provider`, steered through its control port."""

    def __init__(
        self,
        provider: str,
        api_key: str,
        model: str,
        chunk_delay: float = 0.0,
        tls: tuple[Path, Path] | None = None,
        keep_requests: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`host`: where it serves; the local node's Pods reach the host at its link address."""
        self.provider, self.api_key, self.model = provider, api_key, model
        self.port, self.control_port = free_port(), free_port()
        self.host = host
        self.scheme = "https" if tls else "http"
        command = [
            SWITCHYARD, "fake-provider", "--provider", provider, "--port", str(self.port),
            "--api-key", api_key, "--model", model, "--control-port", str(self.control_port),
            "--stream-chunk-delay", str(chunk_delay), "--host", host,
        ]  # fmt: skip
        if keep_requests is not None:
            command += ["--keep-requests", str(keep_requests)]
        if tls:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for_port(self.control_port, self.process, host=host)

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.host}:{self.control_port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read()
        return json.loads(text) if text else None

    def fault(self, **fault: Any) -> None:
        self._control("PUT", "/fault", fault)

    def heal(self) -> None:
        self._control("DELETE", "/fault")

    def requests(self) -> list[dict[str, Any]]:
        recorded: list[dict[str, Any]] = self._control("GET", "/requests")
        return recorded

    def traffic(self) -> list[dict[str, Any]]:
        """The requests clients sent through the gateway, without the operator's probes."""
        return [r for r in self.requests() if r["method"] == "POST"]

    def forget_requests(self) -> None:
        self._control("DELETE", "/requests")

    def reported_usage(self) -> dict[str, int]:
        """The answers and tokens this provider reported (input counting cached input)."""
        reported: dict[str, int] = self._control("GET", "/usage")
        return reported

    def forget_usage(self) -> None:
        self._control("DELETE", "/usage")

    def rotate_key(self, api_key: str) -> None:
        self.api_key = api_key
        self._control("PUT", "/api-key", {"apiKey": api_key})

    def stop(self) -> None:
        stop_process(self.process)


def service_account_key_json(
    key: rsa.RSAPrivateKey, email: str, project: str, token_uri: str, key_id: str
) -> dict[str, str]:
    """A service account's key JSON, as `gcloud iam service-accounts keys create` writes it."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(int.from_bytes(secrets.token_bytes(8), "big")),
        "token_uri": token_uri,
    }


class TokenIssuingProcess(FakeProcess):
    """A fake provider whose clients bring tokens from a token endpoint it runs too: the
    token controls of its control port besides FakeProcess's."""

    def _start(
        self, command: list[str], keep_requests: int | None, token_lifetime: int | None
    ) -> None:
        if keep_requests is not None:
            command += ["--keep-requests", str(keep_requests)]
        if token_lifetime is not None:
            command += ["--token-lifetime", str(token_lifetime)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            # The control port opens last: once it answers, the token endpoint does too.
            wait_for_port(self.control_port, self.process, host=self.host)
        except BaseException:
            self.stop()
            raise

    def tokens(self) -> list[dict[str, Any]]:
        """The tokens issued: token, subject, scopes, expiresIn (seconds, <= 0 once expired)."""
        listed: list[dict[str, Any]] = self._control("GET", "/tokens")
        return listed

    def expire_tokens(self, token: str | None = None) -> int:
        """Expire `token`, or every token issued; how many."""
        body = None if token is None else {"token": token}
        return int(self._control("POST", "/tokens/expire", body)["expired"])

    def revoke_tokens(self, token: str | None = None) -> int:
        """Revoke `token`, or every token issued; how many."""
        body = None if token is None else {"token": token}
        return int(self._control("POST", "/tokens/revoke", body)["revoked"])

    def set_token_lifetime(self, seconds: int) -> None:
        """How long tokens issued from now on live."""
        self._control("PUT", "/token-lifetime", {"seconds": seconds})


class VertexProcess(TokenIssuingProcess):
    """`switchyard fake-provider --provider GCPVertexAI`: Vertex AI and the Google token
    endpoint its tokens come from, in one process, for a service account whose key this
    makes. FakeProcess's control helpers steer it through its one control port (fault, heal,
    requests, traffic, forget_requests, stop), with the token controls besides; it has no API
    key to rotate."""

    def __init__(
        self,
        models: Sequence[str] = ("claude-x@20250101", "google/gemini-x"),
        project: str = "switchyard-lab",
        locations: Sequence[str] = ("us-east5",),
        chunk_delay: float = 0.0,
        keep_requests: int | None = None,
        host: str = "127.0.0.1",
        token_lifetime: int | None = None,
        metadata_account: str | None = None,
        token_creators: Sequence[tuple[str, str]] = (),
        auth_port: int | None = None,
    ) -> None:
        """`models`: Claude ids as in the URL (claude-x@20250101) and `google/<id>` for
        Gemini; `.model` is the first. `locations`: those it serves; `.region` is the first.
        `token_lifetime`: seconds an issued token lives (default: the fake's, 3599).
        `metadata_account`: the workload's account, which a GKE metadata server on
        `auth_port` serves (GCE_METADATA_HOST = `.metadata_host`); `token_creators`:
        (target, caller) pairs for IAM's generateAccessToken there."""
        # Not FakeProcess.__init__, which starts a keyed provider; the helpers need only
        # provider, model, host, scheme, port, control_port and process.
        self.provider, self.models, self.model = "GCPVertexAI", list(models), models[0]
        self.project, self.locations, self.region = project, list(locations), locations[0]
        self.host, self.scheme = host, "http"
        # The token endpoint's port goes in the key's token_uri, so it is chosen first.
        self.port, self.control_port = free_port(), free_port()
        self.auth_port = auth_port or free_port()
        self.email = f"switchyard-lab@{project}.iam.gserviceaccount.com"
        self.key_id = secrets.token_hex(20)
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.service_account_key = json.dumps(
            service_account_key_json(
                self.private_key, self.email, project, self.token_uri, self.key_id
            ),
            indent=2,
        )
        self._workdir = tempfile.TemporaryDirectory(prefix="switchyard-vertex-")
        self.key_file = Path(self._workdir.name) / "service-account-key.json"
        self.key_file.write_text(self.service_account_key)
        command = [
            SWITCHYARD, "fake-provider", "--provider", "GCPVertexAI", "--port", str(self.port),
            "--control-port", str(self.control_port), "--auth-port", str(self.auth_port),
            "--project", project, "--service-account-key", str(self.key_file),
            "--stream-chunk-delay", str(chunk_delay), "--host", host,
        ]  # fmt: skip
        for location in self.locations:
            command += ["--location", location]
        for model in self.models:
            command += ["--model", model]
        if metadata_account:
            command += ["--metadata-account", metadata_account]
        for target, caller in token_creators:
            command += ["--token-creator", f"{target}={caller}"]
        self._start(command, keep_requests, token_lifetime)

    @property
    def metadata_host(self) -> str:
        return f"{self.host}:{self.auth_port}"

    @property
    def token_uri(self) -> str:
        return f"http://{self.host}:{self.auth_port}/token"

    @property
    def service_account_info(self) -> dict[str, Any]:
        """The key JSON, parsed: what google-auth's from_service_account_info takes."""
        info: dict[str, Any] = json.loads(self.service_account_key)
        return info

    def rotate_key(self, api_key: str) -> None:
        raise TypeError("Vertex takes tokens, not an API key: expire or revoke them instead")

    def stop(self) -> None:
        super().stop()
        self._workdir.cleanup()


def lab_ca_and_server(
    directory: Path, hostname: str, addresses: Sequence[str] = ()
) -> tuple[Path, Path, Path]:
    """A fresh private CA and a server certificate it signs for `hostname` and the IP
    `addresses`: (CA certificate, server certificate, server key) PEM files in `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    lifetime = datetime.timedelta(days=1)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("switchyard-lab-ca"))
        .issuer_name(name("switchyard-lab-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    server = (
        x509.CertificateBuilder()
        .subject_name(name(hostname))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class AzureEntraProcess(TokenIssuingProcess):
    """`switchyard fake-provider --provider AzureOpenAI --entra-...`: Azure OpenAI taking only
    Entra ID tokens (an `api-key` is refused 403, as with local auth disabled) and the Entra
    ID token endpoint they come from, in one process, for an app (tenant, client id, client
    secret) and a TLS certificate this makes. FakeProcess's control helpers steer it through
    its one control port (fault, heal, requests, traffic, forget_requests, stop), with the
    token and client-secret controls besides; it has no API key to rotate.

    Clients get tokens as azure-identity's ClientSecretCredential(tenant, client_id,
    client_secret, authority=.authority, disable_instance_discovery=True,
    connection_verify=.ca_bundle)."""

    def __init__(
        self,
        model: str = "gpt-x",
        chunk_delay: float = 0.0,
        keep_requests: int | None = None,
        host: str = "127.0.0.1",
        token_lifetime: int | None = None,
        tenant: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> None:
        """`model`: the deployment it serves. `tenant`, `client_id`, `client_secret`: the
        app's (default: made up). `token_lifetime`: seconds an issued token lives (default:
        the fake's, 3599)."""
        # Not FakeProcess.__init__, which starts a keyed provider; the helpers need only
        # provider, model, host, scheme, port, control_port and process.
        self.provider, self.model = "AzureOpenAI", model
        self.host, self.scheme = host, "http"
        self.port, self.control_port, self.entra_port = free_port(), free_port(), free_port()
        self.tenant = tenant or str(uuid.uuid4())
        self.client_id = client_id or str(uuid.uuid4())
        self.client_secret = client_secret or secrets.token_urlsafe(30)
        self._workdir = tempfile.TemporaryDirectory(prefix="switchyard-entra-")
        # The authority's name must be one the certificate carries: localhost on loopback,
        # else the address the token endpoint serves on.
        addresses = [] if host == "127.0.0.1" else [host]
        ca, certificate, key = lab_ca_and_server(
            Path(self._workdir.name), "localhost", ["127.0.0.1", *addresses]
        )
        self.ca_bundle = str(ca)
        command = [
            SWITCHYARD, "fake-provider", "--provider", "AzureOpenAI", "--port", str(self.port),
            "--control-port", str(self.control_port), "--model", model,
            "--entra-tenant", self.tenant, "--entra-client-id", self.client_id,
            # One flag, "=": token_urlsafe makes a secret that starts with "-" now and then.
            f"--entra-client-secret={self.client_secret}", "--entra-port", str(self.entra_port),
            "--entra-tls-cert", str(certificate), "--entra-tls-key", str(key),
            "--stream-chunk-delay", str(chunk_delay), "--host", host,
        ]  # fmt: skip
        self._start(command, keep_requests, token_lifetime)

    @property
    def authority(self) -> str:
        """azure-identity's `authority` (and AZURE_AUTHORITY_HOST): the token endpoint."""
        name = "localhost" if self.host == "127.0.0.1" else self.host
        return f"https://{name}:{self.entra_port}"

    @property
    def credentials_json(self) -> str:
        """The app's credentials as a Kubernetes Secret holds them for the operator."""
        return json.dumps(
            {
                "tenantId": self.tenant,
                "clientId": self.client_id,
                "clientSecret": self.client_secret,
                "authorityHost": self.authority,
            }
        )

    def rotate_client_secret(self, secret: str) -> None:
        """Give the app a new secret at Entra: the old one is refused from now on (tokens
        already issued still work, as at Entra)."""
        self._control("PUT", "/client-secret", {"clientSecret": secret})
        self.client_secret = secret

    def rotate_key(self, api_key: str) -> None:
        raise TypeError(
            "Azure OpenAI with Entra ID takes tokens, not an API key: rotate the client "
            "secret, or expire or revoke tokens, instead"
        )

    def stop(self) -> None:
        super().stop()
        self._workdir.cleanup()


class BedrockProcess(FakeProcess):
    """`switchyard fake-provider --provider AWSBedrock`: the Bedrock runtime, taking SigV4
    signatures by an AWS key pair this makes (given as a shared-credentials file) and a
    Bedrock API key this makes too (`Authorization: Bearer`). FakeProcess's control helpers
    steer it through its control port (fault, heal, requests, traffic, forget_requests,
    stop); it has no single API key to rotate.

    Clients sign as boto3.client("bedrock-runtime", endpoint_url=.url, region_name=.region,
    aws_access_key_id=.access_key_id, aws_secret_access_key=.secret_access_key)."""

    def __init__(
        self,
        models: Sequence[str] = ("anthropic.claude-x-v1:0", "us.anthropic.claude-y-v1:0"),
        region: str = "us-east-1",
        chunk_delay: float = 0.0,
        keep_requests: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`models`: the model ids it serves; `.model` is the first."""
        # Not FakeProcess.__init__, which starts a keyed provider; the helpers need only
        # provider, model, host, scheme, port, control_port and process.
        self.provider, self.models, self.model = "AWSBedrock", list(models), models[0]
        self.region = region
        self.host, self.scheme = host, "http"
        self.port, self.control_port = free_port(), free_port()
        upper = string.ascii_uppercase + string.digits
        self.access_key_id = "AKIA" + "".join(secrets.choice(upper) for _ in range(16))
        secret = string.ascii_letters + string.digits + "+/"
        self.secret_access_key = "".join(secrets.choice(secret) for _ in range(40))
        self.credentials_file_text = (
            f"[default]\naws_access_key_id = {self.access_key_id}\n"
            f"aws_secret_access_key = {self.secret_access_key}\n"
        )
        # The Bedrock API key (`Authorization: Bearer`).
        self.api_key = "ABSK" + base64.b64encode(secrets.token_bytes(48)).decode()
        self._workdir = tempfile.TemporaryDirectory(prefix="switchyard-bedrock-")
        self.credentials_file = Path(self._workdir.name) / "credentials"
        self.credentials_file.write_text(self.credentials_file_text)
        command = [
            SWITCHYARD, "fake-provider", "--provider", "AWSBedrock", "--port", str(self.port),
            "--control-port", str(self.control_port), "--region", region,
            "--aws-credentials", str(self.credentials_file),
            "--bedrock-api-key", self.api_key,
            "--stream-chunk-delay", str(chunk_delay), "--host", host,
        ]  # fmt: skip
        for model in self.models:
            command += ["--model", model]
        if keep_requests is not None:
            command += ["--keep-requests", str(keep_requests)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(self.control_port, self.process, host=host)
        except BaseException:
            self.stop()
            raise

    def add_credentials(self, credentials: AwsCredentials) -> None:
        """Accept requests signed with these too (STS's, say: `FakeSTS(bedrocks=[this])`)."""
        self._control(
            "PUT",
            "/credentials",
            {
                "accessKeyId": credentials.access_key_id,
                "secretAccessKey": credentials.secret_access_key,
                "sessionToken": credentials.session_token,
                "expires": credentials.expires,
            },
        )

    def traffic(self) -> list[dict[str, Any]]:
        """The requests clients sent through the gateway, without the operator's probes
        (CountTokens and ListAsyncInvokes)."""
        return [r for r in super().traffic() if not r["path"].endswith("/count-tokens")]

    def rotate_key(self, api_key: str) -> None:
        raise TypeError(
            "Bedrock takes SigV4 signatures and Bedrock API keys: change them through "
            "/credentials or /api-key on the control port instead"
        )

    def stop(self) -> None:
        super().stop()
        self._workdir.cleanup()


def discovered_filters(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The HTTP filters of `listeners` whose config comes over ECDS."""
    return [
        http_filter
        for listener in listeners
        for chain in listener.get("filter_chains", [])
        for network_filter in chain.get("filters", [])
        for http_filter in network_filter.get("typed_config", {}).get("http_filters", [])
        if "config_discovery" in http_filter
    ]


def inline_discovered(listeners: list[dict[str, Any]], extensions: list[dict[str, Any]]) -> None:
    """Give each ECDS-discovered filter of `listeners` its config inline, for an Envoy with
    no ADS to ask (a static config, validate mode)."""
    configs = {extension["name"]: extension["typed_config"] for extension in extensions}
    for http_filter in discovered_filters(listeners):
        del http_filter["config_discovery"]
        http_filter["typed_config"] = configs[http_filter["name"]]


def envoy_refusal(config: dict[str, Any], path: Path) -> str | None:
    """What the real Envoy says against `config` (written to `path`) in validate mode, or
    None when it takes it."""
    from switchyard.local_envoy import envoy_binary

    path.write_text(json.dumps(config))
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return None if done.returncode == 0 else done.stdout + done.stderr


class EnvoyProcess:
    """The real Envoy on a whole config of its own (bootstrap and resources), one worker,
    reading backend keys from `credentials` as the gateway's Pods do."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str, credentials: Path) -> None:
        from switchyard.local_envoy import envoy_binary
        from switchyard.render.envoy import CREDENTIALS_DIR_ENV

        path = workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(
            [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
             "--log-level", "warning"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, CREDENTIALS_DIR_ENV: str(credentials)},
        )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.process)


class RateLimiter:
    """The rate limit service every gateway's Envoys share (envoyproxy/ratelimit, built and
    cached by `localcluster.py build`), over a Redis of its own (Debian's redis-server), as
    the Helm chart runs them. Its config names only the domain: each request carries its
    limits."""

    def __init__(self, directory: Path) -> None:
        import ratelimit

        self.directory = directory
        self.redis_port = free_port()
        # Redis takes it on its command line here; the chart's reads it from a Secret.
        self.password = secrets.token_hex(16)
        self.port, self.http_port, self.debug_port = free_port(), free_port(), free_port()
        config = directory / "runtime" / "ratelimit" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "switchyard.yaml").write_text("domain: switchyard\n")
        self.redis = self._start_redis()
        self.process = subprocess.Popen(
            [str(ratelimit.build())],
            stdout=(directory / "ratelimit.log").open("ab"), stderr=subprocess.STDOUT,
            env={
                **os.environ, "USE_STATSD": "false", "LOG_LEVEL": "warn",
                "REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": f"127.0.0.1:{self.redis_port}",
                "REDIS_AUTH": self.password,
                "RUNTIME_ROOT": str(directory / "runtime"), "RUNTIME_SUBDIRECTORY": "ratelimit",
                "RUNTIME_APPDIRECTORY": "config", "RUNTIME_WATCH_ROOT": "false",
                "RUNTIME_IGNOREDOTFILES": "true",
                "HOST": "127.0.0.1", "PORT": str(self.http_port),
                "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(self.port),
                "DEBUG_HOST": "127.0.0.1", "DEBUG_PORT": str(self.debug_port),
            },
        )  # fmt: skip
        wait_for_port(self.port, self.process)

    def _start_redis(self) -> subprocess.Popen[bytes]:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--requirepass", self.password],
            stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.redis_port, redis)
        return redis

    @property
    def address(self) -> str:
        """What `switchyard run --rate-limit-service` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def redis_address(self) -> str:
        """What `switchyard run --rate-limit-redis` takes."""
        return f"127.0.0.1:{self.redis_port}"

    def stop(self) -> None:
        stop_process(self.process)
        stop_process(self.redis)


class LocalEnvoy:
    """`switchyard envoy --gateway`: the real Envoy with the Deployment's bootstrap."""

    def __init__(
        self,
        gateway: str,
        port: int,
        xds_address: str,
        log: Path,
        kubeconfig: str | None = None,
        secret_delay: float = 0.0,
    ) -> None:
        """`secret_delay`: how late credentials changes reach it, as a kubelet's would."""
        self.port = port
        self.log = log
        env = {**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}
        self.process = subprocess.Popen(
            [
                SWITCHYARD, "envoy", "--gateway", gateway, "--port", str(port),
                "--xds-address", xds_address, "--log-level", "warning",
                "--secret-delay", str(secret_delay),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self) -> None:
        wait_for_port(self.port, self.process, timeout=30)

    def config_dump(self) -> str:
        """Envoy's whole config as its admin API shows it, endpoints included."""
        return self.admin("/config_dump?include_eds")

    def admin(self, path: str) -> str:
        """What Envoy's admin API answers at `path` (once `switchyard envoy` has said where
        it is, within a poll of its Secret after Envoy starts)."""
        deadline = time.monotonic() + 10
        while not (
            found := re.search(r"admin on (http://\S+)", self.log.read_text("utf-8", "replace"))
        ):
            assert time.monotonic() < deadline, (
                f"Envoy has not said where its admin API is: {self.log}"
            )
            time.sleep(0.1)
        with urllib.request.urlopen(f"{found[1]}{path}", timeout=10) as reply:
            return str(reply.read().decode())

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Outcome:
    """What a batch of requests got: status counts and which backend (port) answered."""

    statuses: Counter[int] = field(default_factory=Counter)
    ports: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + len(self.errors)

    def shares(self) -> dict[int, float]:
        counts = Counter(self.ports)
        total = sum(counts.values()) or 1
        return {port: n / total for port, n in counts.items()}


# The API key of the lab's ModelClient (`lab_client`): what the load client sends unless
# told otherwise, as an app with its team's key does.
CLIENT_KEY = "sk-switchyard-lab-client-0f3b9c"
CLIENT_HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


def lab_client(
    namespace: str, gateway: str, gateway_namespace: str | None = None, name: str = "lab"
) -> list[dict[str, Any]]:
    """A ModelClient in `namespace` for `gateway` (in `gateway_namespace`, by default the
    same), identified by CLIENT_KEY, and the Secret that holds the key."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-client-key", "namespace": namespace},
            "stringData": {"api-key": CLIENT_KEY},
        },
        {
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "ModelClient",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "gatewayRef": {"name": gateway, "namespace": gateway_namespace or namespace},
                "apiKeyRef": {"name": f"{name}-client-key", "key": "api-key"},
            },
        },
    ]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


async def send(
    url: str,
    body: dict[str, Any],
    count: int,
    concurrency: int = 16,
    headers: dict[str, str] | None = None,
) -> Outcome:
    """POST `body` `count` times with bounded concurrency, noting who answered each; as the
    lab's client (CLIENT_HEADERS) unless `headers` says otherwise."""
    headers = CLIENT_HEADERS if headers is None else headers
    outcome = Outcome()
    remaining = iter(range(count))
    client_timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in remaining:
            try:
                async with session.post(url, json=body, headers=headers) as reply:
                    text = await reply.text()
                    outcome.statuses[reply.status] += 1
                    if reply.status == 200 and (match := REPLY_PORT.search(text)):
                        outcome.ports.append(int(match.group(1)))
            except (TimeoutError, aiohttp.ClientError) as error:
                outcome.errors.append(repr(error))

    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return outcome


def send_sync(
    url: str,
    body: dict[str, Any],
    count: int,
    concurrency: int = 16,
    headers: dict[str, str] | None = None,
) -> Outcome:
    return asyncio.run(send(url, body, count, concurrency, headers))
