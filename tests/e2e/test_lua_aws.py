"""sigv4.lua and event_stream.lua run in the real Envoy: an Anthropic client talks to a Lua
filter that turns its requests into signed Bedrock InvokeModel calls to the fake Bedrock
(which checks signatures with botocore) and its event streams back into Anthropic's SSE.

The same filter answers /lab/<name> itself, so that each Lua function is also checked on its
own against Python's (hmac, botocore, base64, zlib's CRC32) on inputs a client cannot send.
A second upstream writes event streams of its own: frames cut at odd offsets, a corrupt CRC,
Bedrock's exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import random
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

import anthropic
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from gatewaylab import EnvoyProcess, envoy_refusal, wait_for_port
from ports import free_port
from switchyard.fakes.bedrock import AwsCredentials, FakeBedrock, event_frame
from switchyard.render.envoy import TYPE, lua_literal

pytestmark = pytest.mark.e2e

LUA = resources.files("switchyard.render") / "lua"
# The libraries in the order the filter's chunk has them: sigv4.lua uses sha256.lua's local.
LIBRARIES = ("sha256.lua", "sigv4.lua", "event_stream.lua", "json.lua")
REGION = "us-west-2"
HOST = f"bedrock-runtime.{REGION}.amazonaws.com"
KEY, SECRET = "AKIDSWITCHYARDLUA001", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSWITCHYARD"
TEMPORARY_KEY, TEMPORARY_SECRET = "ASIASWITCHYARDLUA002", "tEmPoRaRy/SeCrEt+ForLua"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLXdlc3QtMiJGMEQCIFAKE=="
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.{CLAUDE}"
STREAM_DELAY = 0.02  # seconds the fake waits between events
BENCH_SIGNATURES = 2000
T = TypeVar("T")

# In front of the libraries: the globals there are before them, so that /lab/globals can
# say which ones they added.
BEFORE = """
local globals_before = {}
for name in pairs(_G) do globals_before[name] = true end
"""

# What the renderer's shaper will do for Bedrock, in small: an Anthropic Messages request
# becomes a signed InvokeModel call (credentials from the file `x-lab-credentials` names in
# config.credentials_dir), an event stream answer becomes Anthropic's SSE, chunk by chunk.
# /lab/<name> answers from one of the Lua functions instead.
HARNESS = r"""
local SERVICE, CREDENTIALS_HEADER = "bedrock", "x-lab-credentials"
local loaded, loaded_at = {}, {}

-- A credentials file, parsed; re-read at most once a second, as the shaper reads keys.
local function credentials(name)
  if not string.find(name, "^[%w-]+$") then return nil, "bad credentials name" end
  local now = os.time()
  if loaded_at[name] ~= now or loaded[name] == nil then
    local file = io.open(config.credentials_dir .. "/" .. name, "rb")
    if file == nil then return nil, "no credentials file " .. name end
    local text = file:read("*a")
    file:close()
    local parsed, problem = sigv4_credentials(text)
    if parsed == nil then return nil, problem end
    loaded[name], loaded_at[name] = parsed, now
  end
  return loaded[name]
end

local function percent_encoded(text)
  return (string.gsub(text, "[^A-Za-z0-9%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

local function to_bedrock(handle)
  local body = handle:body()
  local request = json.decode(body:getBytes(0, body:length()))
  local model, stream = request.model, request.stream == true
  request.model, request.stream = nil, nil
  request.anthropic_version = "bedrock-2023-05-31"
  local text = json.encode(request)
  body:setBytes(text)
  local headers = handle:headers()
  local creds, problem = credentials(headers:get(CREDENTIALS_HEADER) or "default")
  if creds == nil then error(problem, 0) end
  local path = "/model/" .. percent_encoded(model)
    .. (stream and "/invoke-with-response-stream" or "/invoke")
  -- The client's key goes nowhere; a token the credentials have not is not sent either.
  for _, name in ipairs({CREDENTIALS_HEADER, "x-api-key", "authorization",
                         "x-amz-security-token"}) do
    headers:remove(name)
  end
  headers:replace(":path", path)
  headers:replace(":authority", config.host)
  local signed = sigv4_sign({
    method = "POST", path = path, query = "", body = text,
    headers = {host = config.host, ["content-type"] = headers:get("content-type")},
  }, creds, config.region, SERVICE, os.time())
  for name, value in pairs(signed) do headers:replace(name, value) end
end

local function stream_error(message)
  return 'event: error\ndata: {"type":"error","error":{"type":"api_error","message":'
    .. json.encode(message) .. "}}\n\n"
end

local function hex_of(bytes)
  return (string.gsub(bytes, ".", function(c) return string.format("%02x", string.byte(c)) end))
end

local function from_hex(text)
  return (string.gsub(text, "%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local LAB = {}

function LAB.hmac(headers, body)
  return hex_of(hmac_sha256(from_hex(headers:get("x-key") or ""), body))
end

-- x-case: {request (without body), credentials, region, service, now}; the body is signed.
function LAB.sign(headers, body)
  local case = json.decode(headers:get("x-case"))
  case.request.body = body
  local signed = sigv4_sign(case.request, case.credentials, case.region, case.service, case.now)
  return json.encode(signed)
end

function LAB.credentials(headers, body)
  local parsed, problem = sigv4_credentials(body)
  return json.encode(parsed or {error = problem})
end

-- Feeds the body in pieces of the sizes x-pieces lists, in turn; answers the messages
-- (payloads in hex, `after`: the bytes fed when each came out), and the error if one was
-- raised, with what one more feed raised then.
function LAB.decode(headers, body)
  local sizes = {}
  for size in string.gmatch(headers:get("x-pieces") or "", "%d+") do
    sizes[#sizes + 1] = tonumber(size)
  end
  if #sizes == 0 then sizes[1] = math.max(#body, 1) end
  local feed, messages, position, turn = event_stream_decoder(), json.array(), 1, 0
  while position <= #body do
    turn = turn % #sizes + 1
    local piece = string.sub(body, position, position + sizes[turn] - 1)
    position = position + #piece
    local ok, got = pcall(feed, piece)
    if not ok then
      local _, again = pcall(feed, "x")
      return json.encode({messages = messages, error = got, again = again})
    end
    for _, message in ipairs(got) do
      messages[#messages + 1] = {
        headers = message.headers, payload = hex_of(message.payload), after = position - 1,
      }
    end
  end
  return json.encode({messages = messages})
end

function LAB.base64(headers, body)
  local ok, decoded = pcall(base64_decode, body)
  if not ok then return decoded, "400" end
  return decoded
end

function LAB.sse(headers, body)
  local ok, text = pcall(function()
    return bedrock_stream_to_sse(event_stream_decoder()(body), invoke_chunk_to_sse)
  end)
  if not ok then return text, "400" end
  return text
end

-- CPU seconds (os.clock) for x-count signatures of the body, for as many SHA-256 digests of
-- it, and for as many signatures each with a signing key of its own (derived, not cached).
LAB["bench-sign"] = function(headers, body)
  local count = tonumber(headers:get("x-count"))
  local request = {
    method = "POST", path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
    query = "", body = body, headers = {host = config.host, ["content-type"] = "application/json"},
  }
  local creds = {access_key_id = "AKIDBENCH", secret_access_key = "bench-secret"}
  local now, signed = os.time(), nil
  local started = os.clock()
  for _ = 1, count do signed = sigv4_sign(request, creds, config.region, SERVICE, now) end
  local sign = os.clock() - started
  started = os.clock()
  for _ = 1, count do sha256_hex(body) end
  local hash = os.clock() - started
  local secrets = {}
  for i = 1, count do secrets[i] = "bench-secret-" .. i end
  started = os.clock()
  for i = 1, count do
    creds.secret_access_key = secrets[i]
    sigv4_sign(request, creds, config.region, SERVICE, now)
  end
  local derive = os.clock() - started
  return json.encode({
    sign = sign, hash = hash, derive = derive, authorization = signed.authorization,
  })
end

function LAB.globals()
  local added = {}
  for name in pairs(_G) do
    if not globals_before[name] then added[#added + 1] = name end
  end
  table.sort(added)
  return table.concat(added, " ")
end

function envoy_on_request(handle)
  local lab = string.match(handle:headers():get(":path"), "^/lab/([%w-]+)$")
  if lab ~= nil then
    local body = handle:body()
    local bytes = body and body:getBytes(0, body:length()) or ""
    local answer, status = LAB[lab](handle:headers(), bytes)
    handle:respond({[":status"] = status or "200"}, answer)
    return
  end
  local ok, problem = pcall(to_bedrock, handle)
  if not ok then
    handle:logErr("lab: " .. tostring(problem))
    local message = json.encode(tostring(problem))
    handle:respond({[":status"] = "502", ["content-type"] = "application/json"},
      '{"type":"error","error":{"type":"api_error","message":' .. message .. "}}")
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if headers:get(":status") ~= "200"
      or not string.find(content_type, "application/vnd.amazon.eventstream", 1, true) then
    return
  end
  headers:replace("content-type", "text/event-stream")
  headers:remove("content-length")
  headers:remove("x-amzn-bedrock-content-type")
  local feed, failed = event_stream_decoder(), false
  for chunk in handle:bodyChunks() do
    local text = ""
    if not failed then
      local ok, result = pcall(function(bytes)
        return bedrock_stream_to_sse(feed(bytes), invoke_chunk_to_sse)
      end, chunk:getBytes(0, chunk:length()))
      if ok then
        text = result
      else
        -- Nothing more of a broken stream reaches the client: an error event ends it.
        failed = true
        handle:logErr("lab: " .. tostring(result))
        text = stream_error("The model's answer stream was corrupt: " .. tostring(result))
      end
    end
    chunk:setBytes(text)
  end
end
"""


def lua_code(credentials_dir: Path) -> str:
    config = lua_literal({"credentials_dir": str(credentials_dir), "region": REGION, "host": HOST})
    libraries = "\n".join((LUA / name).read_text(encoding="utf-8") for name in LIBRARIES)
    return f"local config = {config}\n{BEFORE}\n{libraries}\n{HARNESS}"


def cluster(name: str, port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def static_config(port: int, lua: str, bedrock_port: int, frames_port: int) -> dict[str, Any]:
    """One listener: the Lua filter and the router, to the fake Bedrock, or to the frames
    upstream for a request with `x-lab-upstream: frames`."""
    frames_match = {"name": "x-lab-upstream", "string_match": {"exact": "frames"}}
    manager = {
        "@type": TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "aws",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/", "headers": [frames_match]},
                            "route": {"cluster": "frames", "timeout": "30s"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "bedrock", "timeout": "30s"},
                        },
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": lua},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    listener = {
        "name": "aws",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    clusters = [cluster("bedrock", bedrock_port), cluster("frames", frames_port)]
    return {"static_resources": {"listeners": [listener], "clusters": clusters}}


# --- event streams as Bedrock writes them


def chunk_frame(event: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream `chunk` event carrying an Anthropic stream event."""
    data = base64.b64encode(json.dumps(event).encode()).decode()
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return event_frame(headers, json.dumps({"bytes": data, "p": "abcdefgh"}).encode())


def exception_frame(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return event_frame(headers, json.dumps({"message": message}).encode())


def anthropic_events(model: str, words: list[str]) -> list[dict[str, Any]]:
    """Anthropic's stream events for a text answer of `words`, as Bedrock sends them."""
    usage = {"input_tokens": 3, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_bdrk_lab",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *[
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
            for w in words
        ],
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(words)},
        },
        {"type": "message_stop"},
    ]


WORDS = ["Frames", " cut", " at", " odd", " offsets", " still", " make", " sense."]
# Piece sizes the frames upstream writes in turn: inside preludes, headers, payloads and
# CRCs, and pieces holding several frames.
PIECES = (1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 97, 211, 401, 1499)


def cut(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    pieces: list[bytes] = []
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        pieces.append(data[position : position + size])
        position += size
        turn += 1
    return pieces


class FramesUpstream:
    """An InvokeModelWithResponseStream of its own, unsigned: the model id says what it
    writes. `split-*` the answer in pieces of PIECES' sizes; `corrupt-*` the same with the
    fifth frame's message CRC wrong; `throttled-*` and `failing-*` message_start and then
    one of Bedrock's exceptions."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/model/{model}/invoke-with-response-stream", self._stream)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        model = request.match_info["model"]
        events = anthropic_events(model, WORDS)
        frames = [chunk_frame(event) for event in events]
        if model.startswith("corrupt-"):
            frames[4] = frames[4][:-1] + bytes([frames[4][-1] ^ 0x01])
        elif model.startswith("throttled-"):
            frames = [frames[0], exception_frame("throttlingException", "Too many requests.")]
        elif model.startswith("failing-"):
            frames = [frames[0], exception_frame("modelStreamErrorException", "The model broke.")]
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        try:
            for piece in cut(b"".join(frames), PIECES):
                await response.write(piece)
                # Long enough for Envoy to read each write as a chunk of its own.
                await asyncio.sleep(0.003)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading at an error event: Envoy closed the stream
        return response


# --- the lab


class Clock:
    """The fake's clock, `ahead` seconds in front of the real one."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


class Envoy(EnvoyProcess):
    def __init__(self, config: dict[str, Any], port: int, workdir: Path, credentials: Path) -> None:
        self.port = port
        super().__init__(config, workdir, "envoy", credentials)
        wait_for_port(self.port, self.process, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab(
        self, name: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"{self.url}/lab/{name}", data=body, method="POST", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return int(reply.status), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@dataclass
class Lab:
    envoy: Envoy
    fake: FakeBedrock
    clock: Clock

    def client(self, **headers: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.envoy.url, api_key="unused", max_retries=0, default_headers=headers
        )

    def lab_json(self, name: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        status, reply = self.envoy.lab(name, body, headers)
        assert status == 200, (status, reply, self.envoy.log.read_text()[-2000:])
        return json.loads(reply)


def on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)


def credentials_file(key: str, secret: str, token: str | None = None) -> str:
    lines = ["# written by the test", "[default]", f"aws_access_key_id = {key}"]
    lines.append(f"aws_secret_access_key={secret}")
    if token is not None:
        lines.append(f"aws_session_token  =  {token}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("lua-aws")
    credentials = workdir / "credentials"
    credentials.mkdir()
    (credentials / "default").write_text(credentials_file(KEY, SECRET))
    (credentials / "temporary").write_text(
        credentials_file(TEMPORARY_KEY, TEMPORARY_SECRET, SESSION_TOKEN)
    )
    (credentials / "wrong").write_text(credentials_file(KEY, "not-the-secret"))

    # The fakes serve from a loop in a thread of their own while the client blocks.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    clock = Clock()
    fake = FakeBedrock(
        [
            AwsCredentials(KEY, SECRET),
            AwsCredentials(TEMPORARY_KEY, TEMPORARY_SECRET, SESSION_TOKEN),
        ],
        models=[CLAUDE, PROFILE],
        region=REGION,
        stream_chunk_delay=STREAM_DELAY,
        clock=clock,
    )
    frames = FramesUpstream()
    envoy: Envoy | None = None
    try:
        on(loop, fake.start())
        on(loop, frames.start())
        port = free_port()
        config = static_config(port, lua_code(credentials), fake.port, frames.port)
        refusal = envoy_refusal(config, workdir / "validate.json")
        assert refusal is None, refusal
        envoy = Envoy(config, port, workdir, credentials)
        yield Lab(envoy, fake, clock)
    finally:
        if envoy is not None:
            envoy.stop()
        on(loop, frames.stop())
        on(loop, fake.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def ask(client: anthropic.Anthropic, model: str = CLAUDE) -> anthropic.types.Message:
    return client.messages.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "hi there"}]
    )


def streamed(
    client: anthropic.Anthropic, model: str = CLAUDE, texts: list[str] | None = None
) -> tuple[list[str], list[float]]:
    """The texts as the stream gave them (also added to `texts`, kept when the stream
    fails), and when each arrived."""
    texts = [] if texts is None else texts
    times: list[float] = []
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "hi there"}]
    ) as stream:
        assert stream.response.headers["content-type"] == "text/event-stream"
        for text in stream.text_stream:
            texts.append(text)
            times.append(time.monotonic())
        assert stream.get_final_message().stop_reason == "end_turn"
    return texts, times


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else f" {p}" for i, p in enumerate(parts)]


# --- through the fake Bedrock


def test_a_whole_answer_from_bedrock(lab: Lab) -> None:
    message = ask(lab.client())
    assert cast(anthropic.types.TextBlock, message.content[0]).text == lab.fake.reply_text(CLAUDE)
    assert message.stop_reason == "end_turn"
    sent = lab.fake.requests[-1]
    assert sent.path == f"/model/{CLAUDE}/invoke"
    assert sent.body == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi there"}],
    }
    assert sent.headers["host"] == HOST
    assert sent.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={KEY}/{sent.headers['x-amz-date'][:8]}/{REGION}/bedrock/"
        "aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, "
        "Signature="
    )
    assert "x-amz-security-token" not in sent.headers
    assert "x-api-key" not in sent.headers


def test_a_streamed_answer_arrives_event_by_event(lab: Lab) -> None:
    """The fake writes every third frame in two pieces, and waits between events: each
    word reaches the client as its own event, and not all at once at the end."""
    texts, times = streamed(lab.client())
    assert texts == words(lab.fake.reply_text(CLAUDE))
    assert times[-1] - times[0] >= (len(texts) - 1) * STREAM_DELAY / 2
    assert lab.fake.requests[-1].path == f"/model/{CLAUDE}/invoke-with-response-stream"


def test_temporary_credentials_sign_with_their_session_token(lab: Lab) -> None:
    client = lab.client(**{"x-lab-credentials": "temporary"})
    message = ask(client)
    assert cast(anthropic.types.TextBlock, message.content[0]).text == lab.fake.reply_text(CLAUDE)
    sent = lab.fake.requests[-1]
    assert sent.headers["x-amz-security-token"] == SESSION_TOKEN
    assert f"Credential={TEMPORARY_KEY}/" in sent.headers["authorization"]
    assert "x-amz-date;x-amz-security-token, Signature=" in sent.headers["authorization"]
    texts, _ = streamed(client)
    assert "".join(texts) == lab.fake.reply_text(CLAUDE)


def test_a_model_id_with_colons_and_slashes(lab: Lab) -> None:
    """An inference profile's ARN goes in the path with `:` and `/` percent-encoded, which
    the canonical request encodes once more."""
    message = ask(lab.client(), PROFILE)
    assert cast(anthropic.types.TextBlock, message.content[0]).text == lab.fake.reply_text(PROFILE)
    assert lab.fake.requests[-1].path == f"/model/{PROFILE}/invoke"
    texts, _ = streamed(lab.client(), PROFILE)
    assert "".join(texts) == lab.fake.reply_text(PROFILE)


def test_a_wrong_secret_is_refused(lab: Lab) -> None:
    client = lab.client(**{"x-lab-credentials": "wrong"})
    with pytest.raises(anthropic.PermissionDeniedError, match="signature we calculated") as caught:
        ask(client)
    assert caught.value.response.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
    with pytest.raises(anthropic.PermissionDeniedError, match="signature we calculated"):
        streamed(client)
    assert (
        lab.fake.requests[-1]
        .headers["authorization"]
        .startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    )


def test_a_signature_from_the_past_has_expired(lab: Lab) -> None:
    """Bedrock's clock 6 minutes ahead sees every fresh signature as 6 minutes old: past
    the 5 minutes AWS allows."""
    lab.clock.ahead = 6 * 60
    try:
        with pytest.raises(anthropic.PermissionDeniedError, match="Signature expired"):
            ask(lab.client())
    finally:
        lab.clock.ahead = 0
    ask(lab.client())


# --- through the frames upstream


def test_frames_cut_anywhere_decode(lab: Lab) -> None:
    texts, _ = streamed(lab.client(**{"x-lab-upstream": "frames"}), "split-model")
    assert texts == WORDS


def test_a_corrupt_crc_ends_the_stream_with_an_error(lab: Lab) -> None:
    """The fifth frame's CRC is wrong: what came before may reach the client, nothing of
    that frame or after it does, and the stream ends with Anthropic's error event."""
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        streamed(lab.client(**{"x-lab-upstream": "frames"}), "corrupt-model", texts)
    assert texts == WORDS[: len(texts)]
    assert len(texts) <= 2, "the fifth frame holds the third word"
    body = cast(dict[str, Any], caught.value.body)
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert "message CRC mismatch" in body["error"]["message"]


@pytest.mark.parametrize(
    ("model", "kind", "message"),
    [
        ("throttled-model", "overloaded_error", "Too many requests."),
        ("failing-model", "api_error", "The model broke."),
    ],
)
def test_bedrock_exceptions_become_anthropic_errors(
    lab: Lab, model: str, kind: str, message: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        streamed(lab.client(**{"x-lab-upstream": "frames"}), model)
    assert caught.value.body == {"type": "error", "error": {"type": kind, "message": message}}


# --- each function on its own


@pytest.mark.parametrize("key_length", [0, 1, 20, 63, 64, 65, 131])
def test_hmac_matches_python(lab: Lab, key_length: int) -> None:
    key = bytes((i * 53 + 7) % 256 for i in range(key_length))
    for length in (0, 1, 55, 64, 200):
        message = bytes((i * 31 + 3) % 256 for i in range(length))
        status, reply = lab.envoy.lab("hmac", message, {"x-key": key.hex()})
        assert status == 200
        assert reply.decode() == hmac.new(key, message, hashlib.sha256).hexdigest()


class OnlyThese(SigV4Auth):  # type: ignore[misc]  # botocore has no types
    """botocore's SigV4 over the named headers only, as the fake checks."""

    def __init__(
        self, credentials: Credentials, service: str, region: str, names: list[str]
    ) -> None:
        super().__init__(credentials, service, region)
        self._names = names

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._names:
            headers[name] = request.headers[name]
        return headers


@dataclass
class SignCase:
    path: str
    query: str = ""
    method: str = "POST"
    content_type: str | None = "application/json"
    token: str | None = None
    secret: str = SECRET
    body: bytes = b'{"max_tokens": 5}'
    service: str = "bedrock"


SIGN_CASES = {
    "claude": SignCase(f"/model/{CLAUDE.replace(':', '%3A')}/invoke"),
    "arn": SignCase("/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A1%3Ainference-profile%2Fus.x/invoke"),
    "dot segments": SignCase("/model/./a//b/../c/invoke/"),
    "only dots": SignCase("/../."),
    "root": SignCase("/", method="get", content_type=None, body=b""),
    "reserved bytes": SignCase("/model/a b!$&'()*+,;=@~ü%20/invoke"),
    "query": SignCase("/model/x/invoke", query="b=2&a=1&a=0&c&d=%2F&=e"),
    "session token": SignCase("/model/x/invoke", token=SESSION_TOKEN),
    "spaced content type": SignCase(
        "/model/x/invoke", content_type="  application/json;   charset=utf-8 "
    ),
    "long secret": SignCase("/model/x/invoke", secret="s" * 100),
    "binary body": SignCase("/model/x/invoke", body=bytes(range(256)) * 9, service="s3x"),
}


@pytest.mark.parametrize("name", list(SIGN_CASES))
def test_signatures_match_botocore(lab: Lab, name: str) -> None:
    case = SIGN_CASES[name]
    now = 1_767_225_599  # 2025-12-31T23:59:59Z
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    headers = {"host": HOST}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    credentials: dict[str, str] = {"access_key_id": KEY, "secret_access_key": case.secret}
    if case.token is not None:
        credentials["session_token"] = case.token
    request = {"method": case.method, "path": case.path, "query": case.query, "headers": headers}
    spec = {
        "request": request,
        "credentials": credentials,
        "region": REGION,
        "service": case.service,
        "now": now,
    }
    signed = lab.lab_json("sign", case.body, {"x-case": json.dumps(spec)})

    payload = hashlib.sha256(case.body).hexdigest()
    expected_headers = {"x-amz-date": stamp, "x-amz-content-sha256": payload}
    if case.token is not None:
        expected_headers["x-amz-security-token"] = case.token
    # botocore, given the same request with the headers the Lua added, signing them.
    url = f"https://{HOST}{case.path}" + (f"?{case.query}" if case.query else "")
    aws = AWSRequest(method=case.method, url=url, headers={**headers, **expected_headers},
                     data=case.body)  # fmt: skip
    aws.context["timestamp"] = stamp
    names = sorted([*headers, *expected_headers])
    signer = OnlyThese(Credentials(KEY, case.secret, case.token), case.service, REGION, names)
    signature = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    scope = f"{stamp[:8]}/{REGION}/{case.service}/aws4_request"
    assert signed == {
        **expected_headers,
        "authorization": f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}",
    }


def test_credentials_files(lab: Lab) -> None:
    def parsed(text: str) -> Any:
        return lab.lab_json("credentials", text.encode())

    text = (
        "# AWS credentials\r\n[other]\r\naws_access_key_id = OTHER\r\n\r\n"
        "[default]\r\n  ; a comment\r\nAWS_ACCESS_KEY_ID\t=\tAKID\r\n"
        "aws_secret_access_key =a/b+c=d==\r\naws_session_token= tok==  \r\nregion = x\r\n"
        "[later]\r\naws_session_token = not-this"
    )
    assert parsed(text) == {
        "access_key_id": "AKID",
        "secret_access_key": "a/b+c=d==",
        "session_token": "tok==",
    }
    assert parsed("[ default ]\naws_access_key_id=A\naws_secret_access_key=S") == {
        "access_key_id": "A",
        "secret_access_key": "S",
    }
    assert parsed(
        "[default]\naws_access_key_id=A\naws_secret_access_key=S\naws_session_token=\n"
    ) == {
        "access_key_id": "A",
        "secret_access_key": "S",
    }
    assert parsed("[default]\naws_access_key_id = A\n") == {
        "error": "the [default] profile has no aws_secret_access_key"
    }
    assert parsed("[prod]\naws_access_key_id=A\naws_secret_access_key=S\n") == {
        "error": "the credentials file has no [default] profile"
    }


def typed_frame(headers: list[tuple[str, int, bytes]], payload: bytes) -> bytes:
    """A frame with headers of any type: (name, type byte, encoded value)."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + bytes([kind]) + value for name, kind, value in headers
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def with_crcs(body: bytes) -> bytes:
    """Prelude (total and headers length) + `body` with both CRCs made right."""
    prelude = body[:8]
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + body[8:]
    return message + struct.pack(">I", binascii.crc32(message))


IDENT = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
EVERY_TYPE = typed_frame(
    [
        ("yes", 0, b""),
        ("no", 1, b""),
        ("byte", 2, struct.pack(">b", -5)),
        ("short", 3, struct.pack(">h", -300)),
        ("int", 4, struct.pack(">i", -70000)),
        ("long", 5, struct.pack(">q", -(2**40) - 3)),
        ("bytes", 6, struct.pack(">H", 3) + b"raw"),
        ("string", 7, struct.pack(">H", 5) + b"hello"),
        ("time", 8, struct.pack(">q", 1_700_000_000_123)),
        ("id", 9, IDENT.bytes),
    ],
    b"typed",
)
EVERY_TYPE_HEADERS = {
    "yes": "true",
    "no": "false",
    "byte": "-5",
    "short": "-300",
    "int": "-70000",
    "long": str(-(2**40) - 3),
    "bytes": "raw",
    "string": "hello",
    "time": "1700000000123",
    "id": str(IDENT),
}


def sample_stream() -> tuple[bytes, list[tuple[dict[str, str], bytes]]]:
    """Frames of every shape (no headers, no payload, a large payload, headers of every
    type), and what each decodes to."""
    big = bytes(random.Random(3).randrange(256) for _ in range(20_000))
    frames = [
        (event_frame({":event-type": "chunk", ":message-type": "event"}, b'{"a":1}'),
         {":event-type": "chunk", ":message-type": "event"}, b'{"a":1}'),
        (event_frame({}, b"no headers"), {}, b"no headers"),
        (event_frame({"only": "headers"}, b""), {"only": "headers"}, b""),
        (event_frame({"big": "x" * 300}, big), {"big": "x" * 300}, big),
        (EVERY_TYPE, EVERY_TYPE_HEADERS, b"typed"),
        (event_frame({"last": ""}, b"\x00\r\n"), {"last": ""}, b"\x00\r\n"),
    ]  # fmt: skip
    return b"".join(f for f, _, _ in frames), [(h, p) for _, h, p in frames]


def decoded(lab: Lab, data: bytes, sizes: tuple[int, ...] | None = None) -> Any:
    headers = {"x-pieces": ",".join(map(str, sizes))} if sizes else {}
    return lab.lab_json("decode", data, headers)


@pytest.mark.parametrize(
    "sizes", [None, (1,), (2, 3, 5, 7, 11), (12,), (13, 1, 4000), (9999,)], ids=str
)
def test_the_decoder_takes_any_chunking(lab: Lab, sizes: tuple[int, ...] | None) -> None:
    """Each message comes out of the feed that completes it, whole and in order."""
    data, expected = sample_stream()
    result = decoded(lab, data, sizes)
    assert "error" not in result, result
    assert [(m["headers"], bytes.fromhex(m["payload"])) for m in result["messages"]] == expected
    # Where each frame ends, and so after which feed it must have come out.
    ends: list[int] = []
    position = 0
    for _ in expected:
        position += struct.unpack(">I", data[position : position + 4])[0]
        ends.append(position)
    fed, turn = 0, 0
    outs: list[int] = []
    pieces = sizes or (len(data),)
    for end in ends:
        while fed < end:
            fed += pieces[turn % len(pieces)]
            turn += 1
        outs.append(min(fed, len(data)))
    assert [m["after"] for m in result["messages"]] == outs


def test_bad_frames_raise_and_the_stream_stays_broken(lab: Lab) -> None:
    good = event_frame({"n": "1"}, b"first")
    second = bytearray(event_frame({"n": "2"}, b"second"))
    prelude_wrong = bytes(second[:8]) + bytes([second[8] ^ 0xFF]) + bytes(second[9:])
    payload_wrong = bytes(second[:-6]) + bytes([second[-6] ^ 0x20]) + bytes(second[-5:])
    too_short = with_crcs(struct.pack(">II", 15, 0) + b"abc")
    headers_too_long = with_crcs(struct.pack(">II", 20, 5) + b"abcd")
    unknown_type = typed_frame([("odd", 12, b"")], b"")
    cut_header = with_crcs(struct.pack(">II", 16 + 6, 6) + b"\x03abc\x07\x00")
    for bad, problem in [
        (prelude_wrong, "prelude CRC mismatch"),
        (payload_wrong, "message CRC mismatch"),
        (too_short, "bad message length 15"),
        (headers_too_long, "bad headers length 5"),
        (unknown_type, "header odd has unknown type 12"),
        (cut_header, "header abc runs past the headers"),
    ]:
        result = decoded(lab, good + bad, (1,))
        assert result["error"] == f"event stream: {problem}", (problem, result)
        assert result["again"] == result["error"]
        assert [m["payload"] for m in result["messages"]] == [b"first".hex()]


def test_base64_matches_python(lab: Lab) -> None:
    rng = random.Random(5)
    for length in [*range(0, 12), 100, 3000, 3001, 3002, 9000, 10_001]:
        data = bytes(rng.randrange(256) for _ in range(length))
        status, reply = lab.envoy.lab("base64", base64.b64encode(data))
        assert (status, reply) == (200, data), length
    for bad in [b"abc", b"ab=c", b"a===", b"====", b"ab$d", b"YWJj\nZGVm", b"YW=j"]:
        status, reply = lab.envoy.lab("base64", bad)
        assert status == 400, bad
        assert reply.startswith(b"base64: "), reply


def sse_events(text: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for block in text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: "), block
        assert data.startswith("data: "), block
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    assert text.endswith("\n\n") or text == ""
    return events


def test_chunks_become_anthropic_sse(lab: Lab) -> None:
    pretty = '{\n  "type": "ping"\r\n}'
    stream = b"".join([
        chunk_frame({"type": "message_start", "message": {"id": "m", "content": []}}),
        event_frame({":event-type": "messageStart", ":message-type": "event"}, b"{}"),
        event_frame(
            {":event-type": "chunk", ":message-type": "event"},
            json.dumps({"bytes": base64.b64encode(pretty.encode()).decode()}).encode(),
        ),
        chunk_frame({"type": "content_block_delta", "delta": {"text": "a\nb \"c\" é"}}),
        exception_frame("throttlingException", "Slow down."),
        exception_frame("serviceUnavailableException", "Later."),
        exception_frame("validationException", "Bad \"input\"."),
        event_frame({":message-type": "error", ":error-code": "InternalFailure",
                     ":error-message": "It broke."}, b""),
    ])  # fmt: skip
    status, reply = lab.envoy.lab("sse", stream)
    assert status == 200, reply
    text = reply.decode()
    assert 'event: ping\ndata: {   "type": "ping"  }\n\n' in text
    assert sse_events(text) == [
        ("message_start", {"type": "message_start", "message": {"id": "m", "content": []}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": 'a\nb "c" é'}}),
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Slow down."}},
        ),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Later."}}),
        ("error", {"type": "error", "error": {"type": "api_error", "message": 'Bad "input".'}}),
        ("error", {"type": "error", "error": {"type": "api_error", "message": "It broke."}}),
    ]
    no_bytes = event_frame({":event-type": "chunk"}, b'{"p": "x"}')
    assert lab.envoy.lab("sse", no_bytes) == (400, b"event stream: a chunk without bytes")
    untyped = chunk_frame({"delta": {}})
    assert lab.envoy.lab("sse", untyped) == (400, b"event stream: a chunk's event has no type")


def test_only_the_documented_globals_are_added(lab: Lab) -> None:
    """Besides json (json.lua), the harness's two functions and EnvoyTimestampResolution,
    which Envoy sets itself after the chunk has run; sha256_digest is a local."""
    status, reply = lab.envoy.lab("globals")
    assert status == 200
    added = set(reply.decode().split())
    assert added - {"envoy_on_request", "envoy_on_response", "EnvoyTimestampResolution"} == {
        "sha256_hex", "hmac_sha256", "sigv4_sign", "sigv4_credentials",
        "event_stream_decoder", "base64_decode", "bedrock_stream_to_sse", "invoke_chunk_to_sse",
        "json",
    }  # fmt: skip


def test_cost_of_signing_a_request(lab: Lab) -> None:
    """Prints what signing a 2 KB request costs in Envoy: SigV4 with the day's signing key
    cached, the body's SHA-256 alone, and SigV4 deriving a signing key each time."""
    body = json.dumps(
        {"max_tokens": 64, "messages": [{"role": "user", "content": "x" * 1990}]}
    ).encode()[:2048]
    result = lab.lab_json("bench-sign", body, {"x-count": str(BENCH_SIGNATURES)})
    assert result["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDBENCH/")
    each = {name: result[name] / BENCH_SIGNATURES * 1e6 for name in ("sign", "hash", "derive")}
    print(
        f"\nsigv4_sign of a {len(body)}-byte body in Envoy, {BENCH_SIGNATURES} times: "
        f"{each['sign']:.1f} µs each (os.clock), of which the body's SHA-256 {each['hash']:.1f} "
        f"µs; {each['derive']:.1f} µs each with a signing key derived every time"
    )
