"""answer.lua and the shaper's request for stream usage, in the real Envoy running the
renderer's config, against an upstream that writes an OpenAI stream the way networks deliver
it: the usage event split across two writes, a pause between them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from ports import free_port
from switchyard.plan.gateway import SecretKeys, plan_gateway
from switchyard.render.envoy import render
from tests_support.plans import GATEWAY_KEY, endpoint, gateway

from .test_lua import Envoy, static_config

pytestmark = pytest.mark.e2e

SECRET = ("team-a", "keys")


def event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def chunk(choices: list[Any], usage: Any = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": choices, "usage": usage}  # fmt: skip


WORDS = ["Hello", " there", "."]
# A prompt the upstream refuses with a 400, as JSON, though the request streams.
REFUSED = "refuse this"
REFUSAL = {"message": "no", "type": "invalid_request_error", "param": None, "code": None}
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


@dataclass
class SplitStreams:
    """An OpenAI-compatible upstream whose usage event arrives in two pieces."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        recorded = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                recorded.append(body)
                if body["messages"][0]["content"] == REFUSED:
                    error = json.dumps({"error": REFUSAL}).encode()
                    self.send_response(400)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                pieces = [event(chunk([{"index": 0, "delta": {"content": w}}])) for w in WORDS]
                asked = (body.get("stream_options") or {}).get("include_usage")
                if asked:
                    usage = event(chunk([], USAGE))
                    pieces += [usage[:25], usage[25:]]
                pieces.append(b"data: [DONE]\n\n")
                for piece in pieces:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]


@dataclass
class Lab:
    envoy: Envoy
    upstream: SplitStreams

    def sdk(self) -> Any:
        base = f"http://127.0.0.1:{self.envoy.port}/v1"
        return openai.OpenAI(base_url=base, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir: Path = tmp_path_factory.mktemp("meter")
    credentials = workdir / "credentials"
    credentials.mkdir()
    upstream = SplitStreams()
    port = upstream.start()
    backend = {
        "name": "split",
        "provider": "OpenAICompatible",
        "model": "gpt-4o",
        "url": f"http://127.0.0.1:{port}",
        "credentialsRef": {"name": SECRET[1], "key": "k"},
    }
    plan = plan_gateway(
        GATEWAY_KEY, gateway(), [endpoint("metered", backends=[backend])], {},
        {SECRET: SecretKeys(frozenset({"k"}))},
    )  # fmt: skip
    for route in plan.attached[0].backends:
        assert route.credentials_key is not None
        (credentials / route.credentials_key).write_text("sk-upstream")
    envoy = Envoy(static_config(render(plan, free_port()), free_port()), credentials, workdir)
    try:
        yield Lab(envoy, upstream)
    finally:
        envoy.stop()
        assert upstream.server is not None
        upstream.server.shutdown()


MESSAGES: Any = [{"role": "user", "content": "hi"}]


def test_a_stream_without_usage_asked_gets_none_though_the_gateway_asked(lab: Lab) -> None:
    chunks = list(
        lab.sdk().chat.completions.create(model="metered", messages=MESSAGES, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(WORDS)
    assert all(c.choices for c in chunks)  # the usage-only chunk, split in two, is gone
    assert lab.upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    # Only the member was added: the rest of the body is as the client wrote it.
    assert lab.upstream.bodies[-1]["messages"] == MESSAGES


def test_a_stream_that_asked_for_usage_gets_it(lab: Lab) -> None:
    chunks = list(
        lab.sdk().chat.completions.create(
            model="metered",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]


def test_stream_options_of_the_clients_own_are_kept_and_usage_added(lab: Lab) -> None:
    list(
        lab.sdk().chat.completions.create(
            model="metered",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": False},
        )
    )
    assert lab.upstream.bodies[-1]["stream_options"] == {"include_usage": True}


def test_a_request_that_does_not_stream_is_not_asked_for_stream_usage(lab: Lab) -> None:
    request = lab.sdk().with_raw_response.chat.completions.create(
        model="metered", messages=MESSAGES
    )
    assert "stream_options" not in lab.upstream.bodies[-1]
    assert request.http_response.status_code == 200


def test_an_error_answering_a_stream_reaches_the_client_whole(lab: Lab) -> None:
    refused: Any = [{"role": "user", "content": REFUSED}]
    with pytest.raises(openai.BadRequestError) as raised:
        lab.sdk().chat.completions.create(model="metered", messages=refused, stream=True)
    assert raised.value.body == REFUSAL
