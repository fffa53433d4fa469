"""The gateway's Lua, run in the real Envoy: the renderer's own listener, routes and clusters
as a static config, sending to a recorder on loopback that keeps every request byte for byte.

No operator and no Kubernetes API: the static config holds what ADS would have pushed, so
these tests cost one Envoy start and check exactly what the provider receives.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gatewaylab import EnvoyProcess, envoy_refusal, wait_for_port
from ports import free_port
from switchyard.api.models import BackendTLS
from switchyard.plan.gateway import GatewayPlan, plan_gateway
from switchyard.providers import ANTHROPIC_VERSION
from switchyard.render.envoy import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    METADATA_NAMESPACE,
    ROUTE_TYPE,
    SCRATCH,
    TYPE,
    bootstrap,
    render,
)
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, endpoint, gateway
from tests_support.tls import make_ca_and_server

pytestmark = pytest.mark.e2e

# An upstream model id that needs JSON escapes (quote, backslash, tab) and has non-ASCII.
QUIRKY_MODEL = 'tuned "v2" \\ road/é\tx'
AZURE_VERSION = "2024-10-21"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder:
    """A provider stand-in on loopback: keeps each request as it arrived and answers 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the recorder did not start")

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._socket).start())
        started.set()
        self._loop.run_forever()

    async def _record(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(request.path_qs, headers, body))
        return web.json_response({"object": "chat.completion", "choices": []})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def static_config(resources: dict[str, list[dict[str, Any]]], admin_port: int) -> dict[str, Any]:
    """The gateway's bootstrap with what ADS would push held statically: the listener (on
    loopback, its routes inline instead of over RDS) and the clusters. The failed-attempt
    reports go to an xDS cluster on a closed port, and are lost."""
    config = bootstrap("lua-lab", "127.0.0.1", free_port(), admin_port)
    del config["dynamic_resources"]
    [route_config] = resources[ROUTE_TYPE]
    listeners = copy.deepcopy(resources[LISTENER_TYPE])
    for listener in listeners:
        listener["address"]["socket_address"]["address"] = "127.0.0.1"
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        del manager["rds"]
        manager["route_config"] = route_config
    config["static_resources"]["listeners"] = listeners
    config["static_resources"]["clusters"] += resources[CLUSTER_TYPE]
    return config


def unparsed(listener: dict[str, Any], port: int, model: str) -> dict[str, Any]:
    """A copy of the gateway's listener that takes every request for `model` without
    parsing its body: what json_to_metadata would have found is set as it is, so that a
    body the gateway would refuse reaches the shaper."""
    listener = copy.deepcopy(listener)
    listener["name"] += "-unparsed"
    listener["address"]["socket_address"]["port_value"] = port
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    [index] = [i for i, f in enumerate(filters) if f["name"].endswith("json_to_metadata")]
    # What json_to_metadata does: set the model, then have the route chosen again.
    set_model = f"""
    function envoy_on_request(handle)
      handle:streamInfo():dynamicMetadata():set("{METADATA_NAMESPACE}", "model", "{model}")
      handle:clearRouteCache()
    end
    """
    filters[index] = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": set_model},
        },
    }
    return listener


def backend(name: str, provider: str, model: str, url: str, key: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "provider": provider,
        "model": model,
        "url": url,
        "credentialsRef": {"name": "keys", "key": key},
    }
    if provider == "AzureOpenAI":
        spec["apiVersion"] = AZURE_VERSION
    return spec


def lab_plan(upstream: str, dead: str) -> GatewayPlan:
    """One endpoint per case, each with a single backend."""
    endpoints = [
        endpoint("chat", backends=[backend("a", "OpenAICompatible", "served", upstream, "openai")]),
        endpoint(
            "quirky", backends=[backend("q", "OpenAICompatible", QUIRKY_MODEL, upstream, "openai")]
        ),
        endpoint("claude", backends=[backend("c", "Anthropic", "claude-x", upstream, "anthropic")]),
        endpoint(
            "azure", backends=[backend("z", "AzureOpenAI", "deploy", upstream + "/az", "openai")]
        ),
        endpoint("same", backends=[backend("s", "OpenAICompatible", "same", upstream, "openai")]),
        endpoint("down", backends=[backend("d", "OpenAICompatible", "gone", dead, "openai")]),
    ]
    return plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)


class Envoy(EnvoyProcess):
    def __init__(self, config: dict[str, Any], credentials: Path, workdir: Path) -> None:
        super().__init__(config, workdir, "envoy", credentials)
        ports = [
            listener["address"]["socket_address"]["port_value"]
            for listener in config["static_resources"]["listeners"]
        ]
        self.port: int = ports[0]
        for port in ports:
            wait_for_port(port, self.process, timeout=30)

    def post(
        self, body: bytes, path: str = "/v1/chat/completions", port: int | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or self.port}{path}", data=body, method="POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@dataclass
class Lab:
    envoy: Envoy
    recorder: Recorder
    keys: dict[str, str]
    # The listener that sends every body to the "chat" endpoint unparsed.
    unparsed_port: int

    def forward(self, body: bytes, path: str = "/v1/chat/completions") -> Received:
        """What the provider receives when a client sends `body`."""
        self.recorder.received.clear()
        status, reply = self.envoy.post(body, path)
        assert status == 200, (status, reply, self.envoy.log.read_text()[-2000:])
        [received] = self.recorder.received
        return received


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("lua")
    # The credentials Secret as Envoy's Pod has it mounted: one file per key.
    credentials = workdir / "credentials"
    credentials.mkdir()
    recorder = Recorder()
    envoy: Envoy | None = None
    try:
        plan = lab_plan(recorder.url, f"http://127.0.0.1:{free_port()}")
        keys: dict[str, str] = {}
        for endpoint_plan in plan.attached:
            for route in endpoint_plan.backends:
                assert route.credentials_key is not None
                keys[route.credentials_key] = f"sk-{route.credentials_key}"
                (credentials / route.credentials_key).write_text(keys[route.credentials_key])
        config = static_config(render(plan, free_port()), free_port())
        listeners = config["static_resources"]["listeners"]
        unparsed_port = free_port()
        listeners.append(unparsed(listeners[0], unparsed_port, "chat"))
        envoy = Envoy(config, credentials, workdir)
        yield Lab(envoy, recorder, keys, unparsed_port)
    finally:
        if envoy is not None:
            envoy.stop()
        recorder.stop()


def split_at_model(body: bytes, received: bytes, value: bytes) -> tuple[bytes, bytes]:
    """`received` must be `body` with `value` (the client's model as written, its first
    occurrence) replaced by another JSON value: the value written instead."""
    before, _, after = body.partition(value)
    assert received.startswith(before), received[: len(before) + 80]
    assert received.endswith(after), received[-(len(after) + 80) :]
    return before, received[len(before) : len(received) - len(after)]


def test_the_top_level_model_is_rewritten_and_nothing_else(lab: Lab) -> None:
    """A nested `model` member and `model` inside message text come first; only the
    request's own `model` is the upstream's."""
    head = (
        b'{"metadata": {"model": "chat", "note": "} ] {"},\n'
        b' "messages": [{"role": "user", "content": "pick \\"model\\": \\"chat\\" \\\\"},\n'
        b'              {"role": "user", "content": [{"type": "text", "model": "chat"}]}],\n'
        b' "tools": [{"function": {"parameters": {"properties": {"model": {"enum": ["chat"]}}}}}'
        b"],\n"
        b' "model"  :  '
    )
    tail = b', "stream": false}'
    received = lab.forward(head + b'"chat"' + tail)
    assert received.body == head + b'"served"' + tail

    # JSON parsers disagree on which of two top-level `model`s wins: both are rewritten.
    twice = lab.forward(b'{"model": "chat", "n": {"model": "chat"}, "model": "chat"}')
    assert twice.body == b'{"model": "served", "n": {"model": "chat"}, "model": "served"}'


def test_the_model_is_found_in_any_position_and_spelling(lab: Lab) -> None:
    for body, written in [
        (b'{"model":"chat","messages":[]}', b'"chat"'),
        (b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"model":"chat"}', b'"chat"'),
        # Escapes the client may use: the JSON still says "chat".
        (b'{"messages":[],"model":"ch\\u0061t"}', b'"ch\\u0061t"'),
        (b'{"messages":[],"mod\\u0065l":"chat"}', b'"chat"'),
        (b'\t{ "n": [1, 2.5e3, true, null, {"a": []}],\r\n "model" : "chat" }', b'"chat"'),
        # Empty strings and containers, escaped quotes and backslashes in names and values,
        # strings that end in a backslash, UTF-8.
        (
            b'{"": "", "a\\"b\\\\": "\\\\", "x": [[], {}, [{"y": ["", "\\\\\\""]}]],'
            b' "t": "\xc3\xa9\xe2\x80\xa6 ]}", "model": "chat", "z": {}}',
            b'"chat"',
        ),
    ]:
        received = lab.forward(body).body
        _, value = split_at_model(body, received, written)
        assert value == b'"served"', body
        assert json.loads(received)["model"] == "served"


def test_the_new_model_is_written_as_an_escaped_json_string(lab: Lab) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "model": "quirky", "n": 1}'
    received = lab.forward(body).body
    _, value = split_at_model(body, received, b'"quirky"')
    assert json.loads(value) == QUIRKY_MODEL
    assert json.loads(received) == {**json.loads(body), "model": QUIRKY_MODEL}


def test_a_large_body_is_rewritten_whole(lab: Lab) -> None:
    # Many small strings with escapes, and the model last: the scanner walks all of it.
    message = {"role": "user", "content": 'a "quoted" \\ {model} [1] ' * 4}
    body = json.dumps({"messages": [message] * 40000, "model": "chat"}).encode()
    assert len(body) > 4 * 2**20
    received = lab.forward(body).body
    assert received == body[: -len(b'"chat"}')] + b'"served"}'


def test_an_unchanged_model_leaves_the_body_alone(lab: Lab) -> None:
    """A model the backend serves under the same name: the body is not touched."""
    body = b'{"model": "same", "messages": [], "metadata": {"model": "chat"}}'
    assert lab.forward(body).body == body


def test_each_provider_gets_its_path_and_key_and_no_scratch_header(lab: Lab) -> None:
    """The values the renderer gives the Lua (scratch header names, where the keys are,
    the Anthropic version) reach it."""
    chat = lab.forward(b'{"model": "chat"}')
    assert chat.path == "/v1/chat/completions"
    assert chat.headers["authorization"] == f"Bearer {lab.keys['team-a_keys_openai']}"

    claude = lab.forward(b'{"model": "claude", "max_tokens": 1}', "/v1/messages")
    assert claude.path == "/v1/messages"
    assert claude.headers["x-api-key"] == lab.keys["team-a_keys_anthropic"]
    assert claude.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in claude.headers
    assert json.loads(claude.body)["model"] == "claude-x"

    azure = lab.forward(b'{"model": "azure"}')
    assert (
        azure.path == f"/az/openai/deployments/deploy/chat/completions?api-version={AZURE_VERSION}"
    )
    assert azure.headers["api-key"] == lab.keys["team-a_keys_openai"]

    for received in (chat, claude, azure):
        assert not set(SCRATCH.values()) & set(received.headers)


def test_a_body_the_shaper_cannot_read_fails_the_attempt_as_a_server_error(lab: Lab) -> None:
    """The shaper never forwards a body whose model it could not rewrite: the client's
    model name would reach a provider that does not know it. (The gateway's listener
    refuses such bodies before; this one lets them through to reach the shaper.)"""
    lab.recorder.received.clear()
    for body in [b'{"model": "chat", "messages": [', b'{"model": "chat"', b'["model", "chat"]']:
        status, reply = lab.envoy.post(body, port=lab.unparsed_port)
        assert status == 502, (body, reply)
        error = json.loads(reply)["error"]
        assert error["type"] == "server_error"
        assert error["message"] == "switchyard could not shape the request"
    assert lab.recorder.received == []
    # The same listener forwards a readable body: only the body made the difference.
    status, _ = lab.envoy.post(b'{"model": "chat"}', port=lab.unparsed_port)
    assert status == 200
    assert json.loads(lab.recorder.received[-1].body) == {"model": "served"}


def test_a_5xx_of_the_gateway_is_a_server_error(lab: Lab) -> None:
    """No backend answers: Envoy's own 503 says the fault is on the server's side."""
    status, reply = lab.envoy.post(b'{"model": "down"}')
    assert status == 503
    error = json.loads(reply)["error"]
    assert error["type"] == "server_error"
    assert error["message"]


def test_4xx_of_the_gateway_stay_invalid_request_errors(lab: Lab) -> None:
    status, reply = lab.envoy.post(b'{"model": "nobody-serves-this"}')
    assert status == 404
    error = json.loads(reply)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    status, reply = lab.envoy.post(b"not json")
    assert status == 400
    assert json.loads(reply)["error"]["type"] == "invalid_request_error"


def test_the_rendered_config_of_a_sample_gateway_passes_envoys_validation(tmp_path: Path) -> None:
    """Every resource the renderer makes for a gateway with OpenAI, Anthropic and a private
    https backend, loaded by Envoy itself (Lua compiled included)."""
    private = backend("p", "OpenAICompatible", "m", "https://vllm.ml.svc:8443", "openai")
    endpoints = [endpoint("chat"), endpoint("private", backends=[private])]
    plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)
    ca, _, _ = make_ca_and_server(tmp_path, "vllm.ml.svc")
    tls = BackendTLS(ca_bundle=ca.read_text(), hostnames=["*.ml.svc"])
    config = static_config(render(plan, 8080, tls), free_port())
    refusal = envoy_refusal(config, tmp_path / "gateway.json")
    assert refusal is None, refusal
