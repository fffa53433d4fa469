"""LiteLLM's proxy, the peer the benchmarks compare Switchyard with, run offline against the
project's fake providers.

LiteLLM lives in its own venv under the bench cache (its pins clash with the project's), built
from bench/litellm-requirements.txt and rebuilt when that file changes. The proxy gets the same
weighted split Switchyard configures: one model name, one deployment per backend, each with a
`weight` that LiteLLM's default simple-shuffle strategy picks by. It can serve more models
beside it (`also`), each with deployments of its own: a client of either API reaches any of them,
LiteLLM translating between OpenAI's Chat Completions (`/v1/chat/completions`) and Anthropic's
Messages (`/v1/messages`) when the client's API is not the deployment's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import WORK, tree_pids
from ports import free_port

LITELLM_VERSION = "1.110.2"
REQUIREMENTS = Path(__file__).resolve().with_name("litellm-requirements.txt")
VENV = WORK / f"litellm-{LITELLM_VERSION}"
STAMP = VENV / "requirements.sha256"

# What keeps the proxy offline and quiet. Without the first it fetches the model cost map from
# GitHub at import (three tries with backoff, then the bundled copy); offline mode also keeps the
# UI's blog, release check, policy templates and Anthropic beta-header list on their bundled
# copies; PRODUCTION stops it loading a .env file; telemetry is off by default, and vetoed here.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "HF_HUB_OFFLINE": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def install() -> Path:
    """Create or reuse the cached venv; return the path of its `litellm` executable."""
    WORK.mkdir(parents=True, exist_ok=True)
    # Benchmarks run side by side: one builds, the others wait and then reuse its venv.
    with (WORK / f"litellm-{LITELLM_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install()


def _install() -> Path:
    litellm = VENV / "bin" / "litellm"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if litellm.is_file() and STAMP.is_file() and STAMP.read_text().strip() == digest:
        return litellm
    print(f"installing LiteLLM {LITELLM_VERSION} into {VENV} (a minute, once)", file=sys.stderr)
    # A venv is not relocatable (its scripts name their interpreter), so it is built in place and
    # the stamp, written last, is what marks it complete.
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip"]
    env = {**os.environ, **OFFLINE_ENV}
    # Every package is pinned, so no resolution is needed; --no-deps keeps an unpinned newer
    # release from sneaking in, and `pip check` then proves the pinned set complete.
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "--only-binary=:all:", "-r", str(REQUIREMENTS)],
        check=True,
        env=env,
    )
    subprocess.run([*pip, "check"], check=True, env=env, stdout=subprocess.DEVNULL)
    STAMP.write_text(digest + "\n")
    return litellm


@dataclass(frozen=True)
class Deployment:
    """One backend of the split, in Switchyard's terms."""

    name: str  # also LiteLLM's deployment id: it comes back as x-litellm-model-id
    provider: str  # "OpenAI" | "AzureOpenAI" | "Anthropic" | "OpenAICompatible"
    url: str  # base URL of the provider, e.g. http://127.0.0.1:PORT
    model: str  # upstream model (Azure: deployment name)
    api_key: str
    weight: int
    api_version: str | None = None  # Azure


def litellm_params(deployment: Deployment) -> dict[str, Any]:
    """The deployment as LiteLLM's provider prefix and base URL: each provider's real API."""
    params: dict[str, Any] = {"api_key": deployment.api_key, "weight": deployment.weight}
    if deployment.provider in ("OpenAI", "OpenAICompatible"):
        params |= {"model": f"openai/{deployment.model}", "api_base": f"{deployment.url}/v1"}
    elif deployment.provider == "AzureOpenAI":
        # /openai/deployments/{model}/chat/completions?api-version=..., key in the api-key header.
        params |= {"model": f"azure/{deployment.model}", "api_base": deployment.url}
        if deployment.api_version:
            params["api_version"] = deployment.api_version
    elif deployment.provider == "Anthropic":
        # /v1/messages with x-api-key and anthropic-version: the native API, not its OpenAI one.
        params |= {"model": f"anthropic/{deployment.model}", "api_base": deployment.url}
    else:
        raise ValueError(f"LiteLLM has no mapping for provider {deployment.provider!r}")
    return params


class LiteLLMProxy:
    """`litellm --config ...` with one worker, serving `model` split across `deployments`, and
    each model of `also` across its own (deployment names are ids: unique across all)."""

    def __init__(
        self,
        model: str,
        deployments: Sequence[Deployment],
        log: Path,
        router_settings: Mapping[str, Any] | None = None,
        port: int | None = None,
        also: Mapping[str, Sequence[Deployment]] | None = None,
    ) -> None:
        self.model = model
        self.deployments = list(deployments)
        self.models = {model: self.deployments, **{m: list(d) for m, d in (also or {}).items()}}
        names = [d.name for deployments in self.models.values() for d in deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique: {names}")
        self.log = log
        self.router_settings = dict(router_settings or {})
        self.port = port or free_port()
        self._master_key = f"sk-bench-{secrets.token_hex(8)}"  # LiteLLM wants the sk- prefix
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_key(self) -> str:
        """Clients send `Authorization: Bearer <master_key>`."""
        return self._master_key

    def config(self) -> dict[str, Any]:
        return {
            "model_list": [
                {
                    "model_name": model,
                    "litellm_params": litellm_params(d),
                    "model_info": {"id": d.name},
                }
                for model, deployments in self.models.items()
                for d in deployments
            ],
            # simple-shuffle is the default; named so the config says how the split is made.
            "router_settings": {"routing_strategy": "simple-shuffle", **self.router_settings},
            # Anthropic Messages to an OpenAI or Azure deployment: through Chat Completions, as
            # Switchyard translates, not OpenAI's Responses API (LiteLLM's default since 1.7x).
            "litellm_settings": {"use_chat_completions_url_for_anthropic_messages": True},
        }

    def start(self, timeout: float = 120) -> None:
        litellm = install()
        directory = WORK / "litellm"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / f"config-{self.port}.yaml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")  # JSON is YAML
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # A clean environment: an inherited DATABASE_URL, REDIS_HOST, OPENAI_API_KEY or HTTP proxy
        # would change what the proxy does.
        env = {
            "PATH": f"{litellm.parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LITELLM_MASTER_KEY": self.master_key,
            **OFFLINE_ENV,
        }
        self.process = subprocess.Popen(
            [
                str(litellm), "--config", str(config), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1",
            ],
            cwd=directory,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until the proxy answers its liveness route: it binds only once the router is built."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"LiteLLM exited with {self.process.returncode} while starting; see {self.log}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"LiteLLM did not answer within {timeout}s; see {self.log}")

    def pids(self) -> list[int]:
        """The proxy and its children, for memory."""
        return tree_pids(self.process.pid) if self.process and self.process.poll() is None else []

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The whole session: any worker LiteLLM forked goes with it.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
