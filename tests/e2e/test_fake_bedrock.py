"""The fake Bedrock runtime and the fake STS as AWS's own clients see them: boto3's
bedrock-runtime and sts, and the anthropic SDK's AnthropicBedrock, unchanged but for the
endpoint. A fake that accepts a wrong signature is a failing test."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar, cast

import anthropic
import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from e2e.test_fake_fidelity import png
from ports import free_port
from switchyard.fakes.bedrock import AwsCredentials, FakeBedrock, event_frame
from switchyard.fakes.sts import FakeSTS
from tests_support.tokens import Issuer

pytestmark = pytest.mark.e2e

REGION = "us-west-2"
KEY, SECRET = "AKIDSWITCHYARDTEST01", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSWITCHYARD"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mYWtl"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
NOVA = "amazon.nova-lite-v1:0"
ROLE = "arn:aws:iam::123456789012:role/switchyard-bedrock"
T = TypeVar("T")

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
CLOCK = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS: dict[str, Any] = {
    "tools": [
        {"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER}}},
        {"toolSpec": {"name": "get_time", "description": "Time", "inputSchema": {"json": CLOCK}}},
    ]
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own: the fakes serve there while the synchronous
    clients block the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)


@pytest.fixture
def fake(loop: asyncio.AbstractEventLoop) -> Iterator[FakeBedrock]:
    bedrock = FakeBedrock(
        [AwsCredentials(KEY, SECRET)], api_keys=[API_KEY], models=[CLAUDE, NOVA], region=REGION
    )
    on(loop, bedrock.start(free_port()))
    yield bedrock
    on(loop, bedrock.stop())


def runtime(
    fake: FakeBedrock, key: str = KEY, secret: str = SECRET, token: str | None = None
) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1}),
    )


def claude(fake: FakeBedrock, secret: str = SECRET) -> anthropic.AnthropicBedrock:
    return anthropic.AnthropicBedrock(
        aws_access_key=KEY,
        aws_secret_key=secret,
        aws_region=REGION,
        base_url=fake.url,
        max_retries=0,
    )


def invoke_body(**extra: Any) -> bytes:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi there"}],
        **extra,
    }
    return json.dumps(body).encode()


class SignsEverything(SigV4Auth):  # type: ignore[misc]  # botocore has no types
    """Signs every header, user-agent included, as Envoy's signer does (botocore leaves
    user-agent out)."""

    def headers_to_sign(self, request: AWSRequest) -> Any:
        headers = super().headers_to_sign(request)
        headers["user-agent"] = request.headers["User-Agent"]
        return headers


def signed(
    url: str,
    body: bytes,
    key: str = KEY,
    secret: str = SECRET,
    region: str = REGION,
    signer: type[SigV4Auth] = SigV4Auth,
) -> AWSRequest:
    headers = {"Content-Type": "application/json", "User-Agent": "switchyard-test/1"}
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    signer(Credentials(key, secret), "bedrock", region).add_auth(request)
    return request


def send(request: AWSRequest, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """Sends a signed request, with `body` instead of the signed one if given."""
    data = request.body if body is None else body
    assert isinstance(data, bytes)
    outgoing = urllib.request.Request(
        request.url, data=data, headers=dict(request.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(outgoing, timeout=10) as reply:
            return reply.status, dict(reply.headers.items()), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def error_code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def frames(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Decodes an event stream, checking both CRCs of every frame."""
    decoded = []
    while data:
        total, length, prelude_crc = struct.unpack(">III", data[:12])
        assert prelude_crc == binascii.crc32(data[:8])
        assert struct.unpack(">I", data[total - 4 : total])[0] == binascii.crc32(data[: total - 4])
        headers, at = {}, 12
        while at < 12 + length:
            size = data[at]
            name = data[at + 1 : at + 1 + size].decode()
            assert data[at + 1 + size] == 7, "string headers"
            (value_size,) = struct.unpack(">H", data[at + 2 + size : at + 4 + size])
            headers[name] = data[at + 4 + size : at + 4 + size + value_size].decode()
            at += 4 + size + value_size
        decoded.append((headers, data[12 + length : total - 4]))
        data = data[total:]
    return decoded


# --- Converse


def test_converse_answers_in_its_shape_with_usage(fake: FakeBedrock) -> None:
    answer = runtime(fake).converse(
        modelId=CLAUDE,
        system=[{"text": "Be brief."}],
        messages=[user("Say hello to me")],
        inferenceConfig={"maxTokens": 64, "temperature": 0.5},
    )
    assert answer["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": f"Hello from AWSBedrock {CLAUDE} on port {fake.port}."}],
    }
    assert fake.reply_text(CLAUDE) == answer["output"]["message"]["content"][0]["text"]
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 6, "outputTokens": 7, "totalTokens": 13}
    assert answer["metrics"]["latencyMs"] >= 1
    assert fake.requests[-1].path == f"/model/{CLAUDE}/converse"
    assert (
        fake.requests[-1].headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    )


def test_converse_cuts_at_stop_sequences_and_max_tokens(fake: FakeBedrock) -> None:
    client = runtime(fake)
    stopped = client.converse(
        modelId=NOVA, messages=[user("hi")], inferenceConfig={"stopSequences": ["AWSBedrock"]}
    )
    assert stopped["output"]["message"]["content"] == [{"text": "Hello from "}]
    assert stopped["stopReason"] == "stop_sequence"
    cut = client.converse(modelId=NOVA, messages=[user("hi")], inferenceConfig={"maxTokens": 2})
    assert cut["output"]["message"]["content"] == [{"text": "Hello from"}]
    assert (cut["stopReason"], cut["usage"]["outputTokens"]) == ("max_tokens", 2)


def test_converse_prompt_cache_and_model_ids_in_paths(loop: asyncio.AbstractEventLoop) -> None:
    """A cachePoint ends a cached prefix: written the first time, read the next; an inference
    profile's ARN goes in the path with its `/` and `:` percent-encoded."""
    profile = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/us.{CLAUDE}"
    fake = FakeBedrock([AwsCredentials(KEY, SECRET)], models=[profile], region=REGION)
    on(loop, fake.start())
    try:
        system = [{"text": "You answer in five words."}, {"cachePoint": {"type": "default"}}]
        client = runtime(fake)
        usages = [
            client.converse(modelId=profile, system=system, messages=[user("hi there")])["usage"]
            for _ in range(2)
        ]
        assert usages[0] == {
            "inputTokens": 2,
            "outputTokens": 7,
            "totalTokens": 14,
            "cacheReadInputTokens": 0,
            "cacheWriteInputTokens": 5,
        }
        assert (usages[1]["cacheReadInputTokens"], usages[1]["cacheWriteInputTokens"]) == (5, 0)
        assert fake.requests[-1].path == f"/model/{profile}/converse"
    finally:
        on(loop, fake.stop())


def test_converse_stream_sends_aws_events(fake: FakeBedrock) -> None:
    reply = runtime(fake).converse_stream(modelId=CLAUDE, messages=[user("hi there")])
    events = list(reply["stream"])
    names = [next(iter(event)) for event in events]
    assert names == [
        "messageStart",
        *["contentBlockDelta"] * 7,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:8])
    assert text == fake.reply_text(CLAUDE)
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 2,
        "outputTokens": 7,
        "totalTokens": 9,
    }

    status, headers, raw = send(
        signed(
            f"{fake.url}/model/{CLAUDE}/converse-stream",
            json.dumps({"messages": [user("x")]}).encode(),
        )
    )
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.amazon.eventstream"
    decoded = frames(raw)
    assert decoded[0][0][":event-type"] == "messageStart"
    assert all(h[":message-type"] == "event" for h, _ in decoded)
    assert json.loads(decoded[0][1])["role"] == "assistant"


def test_converse_tool_use_round_trip(fake: FakeBedrock) -> None:
    client = runtime(fake)
    question = user("What is the weather, and the time?")
    first = client.converse(modelId=CLAUDE, messages=[question], toolConfig=TOOLS)
    assert first["stopReason"] == "tool_use"
    calls = [block["toolUse"] for block in first["output"]["message"]["content"]]
    assert [(c["name"], c["input"]) for c in calls] == [
        ("get_weather", {"city": "sample", "days": 1}),
        ("get_time", {"zone": "sample"}),
    ]
    assert all(c["toolUseId"].startswith("tooluse_") for c in calls)
    assert first["usage"]["outputTokens"] == 20

    results = {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": calls[0]["toolUseId"], "content": [{"text": "Sunny"}]}},
            {
                "toolResult": {
                    "toolUseId": calls[1]["toolUseId"],
                    "content": [{"json": {"time": "noon"}}],
                    "status": "success",
                }
            },
        ],
    }
    second = client.converse(
        modelId=CLAUDE, messages=[question, first["output"]["message"], results], toolConfig=TOOLS
    )
    assert second["output"]["message"]["content"] == [
        {
            "text": f"Tool results: {calls[0]['toolUseId']}=Sunny; "
            f'{calls[1]["toolUseId"]}={{"time": "noon"}}'
        }
    ]

    named = {**TOOLS, "toolChoice": {"tool": {"name": "get_time"}}}
    streamed = list(
        client.converse_stream(modelId=CLAUDE, messages=[question], toolConfig=named)["stream"]
    )
    start = streamed[1]["contentBlockStart"]["start"]["toolUse"]
    assert start["name"] == "get_time"
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in streamed[2:-3]]
    assert len(pieces) > 1, "the input comes in fragments"
    assert json.loads("".join(pieces)) == {"zone": "sample"}
    assert streamed[-2]["messageStop"]["stopReason"] == "tool_use"

    with pytest.raises(ClientError, match=r"Expected toolResult blocks at messages\.2\.content"):
        client.converse(
            modelId=CLAUDE,
            messages=[question, first["output"]["message"], user("never mind")],
            toolConfig=TOOLS,
        )


def test_converse_sees_images(fake: FakeBedrock) -> None:
    image = png()
    answer = runtime(fake).converse(
        modelId=NOVA,
        messages=[
            {
                "role": "user",
                "content": [
                    {"text": "What?"},
                    {"image": {"format": "png", "source": {"bytes": image}}},
                ],
            }
        ],
    )
    assert answer["output"]["message"]["content"] == [
        {"text": f"I see an image: image/png {len(image)} bytes"}
    ]
    with pytest.raises(ClientError, match="not a valid jpeg image"):
        runtime(fake).converse(
            modelId=NOVA,
            messages=[
                {
                    "role": "user",
                    "content": [{"image": {"format": "jpeg", "source": {"bytes": image}}}],
                }
            ],
        )


def test_converse_refuses_what_bedrock_refuses(fake: FakeBedrock) -> None:
    url = f"{fake.url}/model/{CLAUDE}/converse"

    def refusal(body: dict[str, Any]) -> tuple[str, str]:
        status, headers, raw = send(signed(url, json.dumps(body).encode()))
        assert status == 400
        return headers["x-amzn-ErrorType"].split(":")[0], json.loads(raw)["message"]

    kind, message = refusal({"messages": [user("hi")], "inferenceConfig": {"topK": 5}})
    assert kind == "ValidationException"
    assert message.startswith('Unknown parameter in inferenceConfig: "topK"')
    _, message = refusal({"messages": [user("hi")], "model": CLAUDE})
    assert 'Unknown parameter in input: "model"' in message
    _, message = refusal({"messages": [user("hi"), user("again")]})
    assert message.startswith("A conversation must alternate between user and assistant roles")
    _, message = refusal({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]})
    assert message.startswith("A conversation must start with a user message")
    _, message = refusal({"messages": [user(" ")]})
    assert "The text field in the ContentBlock object at messages.0.content.0 is blank" in message
    _, message = refusal({"messages": [user("hi")], "inferenceConfig": {"maxTokens": 0}})
    assert "'inferenceConfig.maxTokens' failed to satisfy constraint" in message
    _, message = refusal({"messages": [{"role": "user", "content": [{"text": "a", "image": {}}]}]})
    assert "'messages.1.member.content.1.member'" in message

    with pytest.raises(ClientError, match="The provided model identifier is invalid") as caught:
        runtime(fake).converse(modelId="anthropic.claude-nope-v1:0", messages=[user("hi")])
    assert error_code(caught.value) == "ValidationException"


# --- InvokeModel (Claude)


def test_invoke_model_plain_and_streamed(fake: FakeBedrock) -> None:
    client = runtime(fake)
    reply = client.invoke_model(modelId=CLAUDE, body=invoke_body())
    message = json.loads(reply["body"].read())
    assert message["type"] == "message"
    assert message["content"] == [{"type": "text", "text": fake.reply_text(CLAUDE)}]
    assert message["usage"]["input_tokens"] == 2
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "7"

    streamed = client.invoke_model_with_response_stream(modelId=CLAUDE, body=invoke_body())
    events = [json.loads(part["chunk"]["bytes"]) for part in streamed["body"]]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 7,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "".join(e["delta"]["text"] for e in events[2:9]) == fake.reply_text(CLAUDE)
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 7

    with pytest.raises(ClientError, match=r"extraneous key \[model\] is not permitted"):
        client.invoke_model(modelId=CLAUDE, body=invoke_body(model=CLAUDE))
    with pytest.raises(ClientError, match=r"required key \[anthropic_version\] not found"):
        client.invoke_model(modelId=CLAUDE, body=json.dumps({"max_tokens": 5, "messages": []}))
    with pytest.raises(ClientError, match="roles must alternate"):
        client.invoke_model(
            modelId=CLAUDE,
            body=invoke_body(
                messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
            ),
        )


def test_anthropic_bedrock_client(fake: FakeBedrock) -> None:
    client = claude(fake)
    message = client.messages.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert cast(anthropic.types.TextBlock, message.content[0]).text == fake.reply_text(CLAUDE)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1, 7)
    sent = fake.requests[-1]
    assert sent.path == f"/model/{CLAUDE}/invoke"
    assert "model" not in sent.body
    assert "stream" not in sent.body
    with client.messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == fake.reply_text(CLAUDE)
    assert final.stop_reason == "end_turn"
    assert fake.requests[-1].path == f"/model/{CLAUDE}/invoke-with-response-stream"

    keyed = anthropic.AnthropicBedrock(
        api_key=API_KEY, aws_region=REGION, base_url=fake.url, max_retries=0
    )
    keyed.messages.create(model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "a"}])
    assert fake.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    wrong = anthropic.AnthropicBedrock(
        api_key="ABSKwrong", aws_region=REGION, base_url=fake.url, max_retries=0
    )
    with pytest.raises(anthropic.PermissionDeniedError):
        wrong.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "a"}]
        )


# --- what a signature must be


def test_a_wrong_secret_is_refused(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as caught:
        runtime(fake, secret="not-the-secret").converse(modelId=CLAUDE, messages=[user("hi")])
    assert error_code(caught.value) == "InvalidSignatureException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "The request signature we calculated does not match" in str(caught.value)
    with pytest.raises(anthropic.PermissionDeniedError, match="signature we calculated"):
        claude(fake, secret="not-the-secret").messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )


def test_an_unknown_key_and_a_missing_signature_are_refused(fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as caught:
        runtime(fake, key="AKIDUNKNOWN").converse(modelId=CLAUDE, messages=[user("hi")])
    assert error_code(caught.value) == "UnrecognizedClientException"
    assert "The security token included in the request is invalid." in str(caught.value)

    assert send(signed(f"{fake.url}/model/{CLAUDE}/converse", b"{}"))[0] == 400, (
        "a signed request gets as far as validation"
    )
    unsigned = urllib.request.Request(
        f"{fake.url}/model/{CLAUDE}/converse", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 403
    assert refused.value.headers["x-amzn-ErrorType"].startswith(
        "MissingAuthenticationTokenException"
    )


def test_a_tampered_request_is_refused(fake: FakeBedrock) -> None:
    url = f"{fake.url}/model/{CLAUDE}/converse"
    body = json.dumps({"messages": [user("hello")]}).encode()
    assert send(signed(url, body))[0] == 200, "the untouched request passes"
    tampered = body.replace(b"hello", b"jello")
    status, headers, raw = send(signed(url, body), tampered)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
    assert json.loads(raw)["message"].startswith("The request signature we calculated")

    # The body's hash sent along must be the body's.
    request = signed(url, body)
    request.headers["X-Amz-Content-SHA256"] = "0" * 64
    assert send(request)[0] == 403
    # Another path, another region, a signed header changed after signing.
    moved = signed(url, body)
    moved.url = f"{fake.url}/model/{NOVA}/converse"
    assert send(moved)[0] == 403
    assert send(signed(url, body, region="us-east-1"))[0] == 403
    changed = signed(url, body)
    changed.headers.replace_header("Content-Type", "text/plain")
    assert send(changed)[0] == 403

    # Only the headers named in SignedHeaders count, but all of those do.
    assert "user-agent" not in str(signed(url, body).headers["Authorization"])
    other_agent = signed(url, body)
    other_agent.headers.replace_header("User-Agent", "another/2")
    assert send(other_agent)[0] == 200
    everything = signed(url, body, signer=SignsEverything)
    assert "user-agent" in str(everything.headers["Authorization"])
    assert send(everything)[0] == 200
    everything.headers.replace_header("User-Agent", "another/2")
    assert send(everything)[0] == 403


def test_an_old_signature_has_expired(loop: asyncio.AbstractEventLoop) -> None:
    """A Bedrock whose clock runs 6 minutes ahead sees every fresh signature as 6 minutes
    old: past the 5 minutes AWS allows."""
    ahead = FakeBedrock(
        [AwsCredentials(KEY, SECRET)], models=[CLAUDE], region=REGION,
        clock=lambda: time.time() + 6 * 60,
    )  # fmt: skip
    on(loop, ahead.start(free_port()))
    try:
        with pytest.raises(ClientError, match="Signature expired") as caught:
            runtime(ahead).converse(modelId=CLAUDE, messages=[user("hi")])
    finally:
        on(loop, ahead.stop())
    assert error_code(caught.value) == "InvalidSignatureException"


def test_keys_rotate_through_the_control_port(fake: FakeBedrock) -> None:
    assert fake._control is not None
    control = f"http://127.0.0.1:{fake._control.addresses[0][1]}"

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> int:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{control}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)

    new_key, new_secret = "AKIDSWITCHYARDTEST02", "rotated-secret"
    call("PUT", "/credentials", {"accessKeyId": new_key, "secretAccessKey": new_secret})
    runtime(fake, new_key, new_secret).converse(modelId=CLAUDE, messages=[user("hi")])
    runtime(fake).converse(modelId=CLAUDE, messages=[user("hi")])
    call("DELETE", f"/credentials/{KEY}")
    with pytest.raises(ClientError, match="UnrecognizedClientException"):
        runtime(fake).converse(modelId=CLAUDE, messages=[user("hi")])

    fake.add_credentials(AwsCredentials("ASIAEXPIRED", "s", session_token="t", expires=1.0))
    with pytest.raises(ClientError, match="ExpiredTokenException"):
        runtime(fake, "ASIAEXPIRED", "s", "t").converse(modelId=CLAUDE, messages=[user("hi")])

    call("PUT", "/fault", {"status": 429})
    with pytest.raises(ClientError) as caught:
        runtime(fake, new_key, new_secret).converse(modelId=CLAUDE, messages=[user("hi")])
    assert error_code(caught.value) == "ThrottlingException"
    call("DELETE", "/fault")
    recorded = json.loads(urllib.request.urlopen(f"{control}/requests", timeout=10).read())
    assert recorded[-1]["path"] == f"/model/{CLAUDE}/converse"


# --- STS


def test_sts_web_identity_credentials_sign_for_bedrock(
    fake: FakeBedrock, loop: asyncio.AbstractEventLoop
) -> None:
    issuer = Issuer("https://oidc.eks.us-west-2.amazonaws.com/id/SWITCHYARD")
    subject = "system:serviceaccount:team:switchyard"
    sts = FakeSTS(issuer.jwks(), issuer.issuer, {ROLE: subject}, [fake])
    on(loop, sts.start())
    try:
        client = boto3.client(
            "sts",
            endpoint_url=sts.url,
            region_name=REGION,
            aws_access_key_id="unused",
            aws_secret_access_key="unused",
        )
        token = issuer.token("team", "switchyard", audience="sts.amazonaws.com")
        assumed = client.assume_role_with_web_identity(
            RoleArn=ROLE, RoleSessionName="switchyard", WebIdentityToken=token
        )
        assert assumed["SubjectFromWebIdentityToken"] == subject
        credentials = assumed["Credentials"]
        assert credentials["AccessKeyId"].startswith("ASIA")
        answer = runtime(
            fake,
            credentials["AccessKeyId"],
            credentials["SecretAccessKey"],
            credentials["SessionToken"],
        ).converse(modelId=CLAUDE, messages=[user("hi")])
        assert answer["stopReason"] == "end_turn"
        with pytest.raises(ClientError, match="UnrecognizedClientException"):
            runtime(fake, credentials["AccessKeyId"], credentials["SecretAccessKey"]).converse(
                modelId=CLAUDE, messages=[user("hi")]
            )

        refusals = {
            "ExpiredTokenException": issuer.token(
                "team", "switchyard", audience="sts.amazonaws.com", lifetime=-60
            ),
            "InvalidIdentityToken": issuer.token("team", "switchyard"),
            "AccessDenied": issuer.token("team", "other", audience="sts.amazonaws.com"),
        }
        for code, refused in refusals.items():
            with pytest.raises(ClientError) as caught:
                client.assume_role_with_web_identity(
                    RoleArn=ROLE, RoleSessionName="switchyard", WebIdentityToken=refused
                )
            assert error_code(caught.value) == code
        stranger = Issuer(issuer.issuer).token("team", "switchyard", audience="sts.amazonaws.com")
        with pytest.raises(ClientError, match="InvalidIdentityToken"):
            client.assume_role_with_web_identity(
                RoleArn=ROLE, RoleSessionName="switchyard", WebIdentityToken=stranger
            )
    finally:
        on(loop, sts.stop())


def test_event_frames_carry_both_checksums() -> None:
    """The frames' own encoding, read by the test's decoder rather than a client's."""
    frame = event_frame({":event-type": "chunk"}, b'{"bytes":"' + base64.b64encode(b"{}") + b'"}')
    [(headers, payload)] = frames(frame)
    assert headers == {":event-type": "chunk"}
    assert base64.b64decode(json.loads(payload)["bytes"]) == b"{}"
