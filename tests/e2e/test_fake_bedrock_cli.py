"""The Bedrock fake as the tests and the demo run it: `switchyard fake-provider --provider
AWSBedrock` in a process of its own (BedrockProcess), reached by boto3 and the anthropic SDK
with the key pair and the Bedrock API key made for it."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import anthropic
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gatewaylab import BedrockProcess
from switchyard.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bedrock() -> Iterator[BedrockProcess]:
    process = BedrockProcess()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def fresh(bedrock: BedrockProcess) -> Iterator[None]:
    bedrock.forget_requests()
    yield
    bedrock.heal()


def runtime(bedrock: BedrockProcess, secret: str | None = None) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=bedrock.url,
        region_name=bedrock.region,
        aws_access_key_id=bedrock.access_key_id,
        aws_secret_access_key=secret or bedrock.secret_access_key,
        config=Config(retries={"max_attempts": 1}),
    )


def invoke_body(text: str = "hi there") -> bytes:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
    return json.dumps(body).encode()


def reply_text(bedrock: BedrockProcess, model: str) -> str:
    return f"Hello from AWSBedrock {model} on port {bedrock.port}."


def test_boto3_invokes_streams_and_counts_tokens(bedrock: BedrockProcess) -> None:
    client = runtime(bedrock)
    model = bedrock.models[1]  # a cross-region profile's id
    reply = client.invoke_model(modelId=model, body=invoke_body())
    message = json.loads(reply["body"].read())
    assert message["content"] == [{"type": "text", "text": reply_text(bedrock, model)}]
    streamed = client.invoke_model_with_response_stream(modelId=bedrock.model, body=invoke_body())
    events = [json.loads(part["chunk"]["bytes"]) for part in streamed["body"]]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == reply_text(bedrock, bedrock.model)
    assert events[-1]["type"] == "message_stop"

    counted = client.count_tokens(
        modelId=bedrock.model, input={"invokeModel": {"body": invoke_body("one two three")}}
    )
    assert counted["inputTokens"] == 3
    counted = client.count_tokens(
        modelId=bedrock.model,
        input={
            "converse": {
                "system": [{"text": "be brief"}],
                "messages": [{"role": "user", "content": [{"text": "hi there"}]}],
            }
        },
    )
    assert counted["inputTokens"] == 4
    # A probe's call, so requests() (traffic() leaves the probes out).
    assert [r["path"] for r in bedrock.requests()][-1] == f"/model/{bedrock.model}/count-tokens"

    with pytest.raises(ClientError) as caught:
        client.count_tokens(modelId="anthropic.nope-v1:0", input={"converse": {"messages": []}})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "The provided model identifier is invalid." in str(caught.value)
    with pytest.raises(ClientError) as caught:
        client.count_tokens(modelId=bedrock.model, input={"invokeModel": {"body": b"not json"}})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_anthropic_bedrock_client(bedrock: BedrockProcess) -> None:
    client = anthropic.AnthropicBedrock(
        aws_access_key=bedrock.access_key_id,
        aws_secret_key=bedrock.secret_access_key,
        aws_region=bedrock.region,
        base_url=bedrock.url,
        max_retries=0,
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    message = client.messages.create(model=bedrock.model, max_tokens=64, messages=messages)
    text = cast(anthropic.types.TextBlock, message.content[0]).text
    assert text == reply_text(bedrock, bedrock.model)
    with client.messages.stream(model=bedrock.model, max_tokens=64, messages=messages) as stream:
        assert "".join(stream.text_stream) == reply_text(bedrock, bedrock.model)
    assert bedrock.traffic()[-1]["path"] == f"/model/{bedrock.model}/invoke-with-response-stream"


def post(bedrock: BedrockProcess, key: str) -> tuple[int, dict[str, Any]]:
    url = f"{bedrock.url}/model/{urllib.parse.quote(bedrock.model, safe='')}/invoke"
    request = urllib.request.Request(
        url,
        data=invoke_body(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, {"type": error.headers["x-amzn-ErrorType"], **json.loads(error.read())}


def test_the_bedrock_api_key_and_no_other(bedrock: BedrockProcess) -> None:
    status, message = post(bedrock, bedrock.api_key)
    assert status == 200
    assert message["content"][0]["text"] == reply_text(bedrock, bedrock.model)
    status, refusal = post(bedrock, "ABSKbm90LXRoZS1rZXk=")
    assert status == 403
    assert refusal["type"].startswith("UnrecognizedClientException")


def test_a_wrong_secret_is_refused(bedrock: BedrockProcess) -> None:
    with pytest.raises(ClientError) as caught:
        runtime(bedrock, secret="x" * 40).invoke_model(modelId=bedrock.model, body=invoke_body())
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_process_and_its_credentials(bedrock: BedrockProcess) -> None:
    assert bedrock.provider == "AWSBedrock"
    assert bedrock.url == f"http://127.0.0.1:{bedrock.port}"
    assert bedrock.access_key_id.startswith("AKIA")
    assert len(bedrock.access_key_id) == 20
    assert len(bedrock.secret_access_key) == 40
    assert bedrock.credentials_file_text == (
        f"[default]\naws_access_key_id = {bedrock.access_key_id}\n"
        f"aws_secret_access_key = {bedrock.secret_access_key}\n"
    )
    assert bedrock.api_key.startswith("ABSK")
    with pytest.raises(TypeError):
        bedrock.rotate_key("sk-new")
    bedrock.fault(status=429)
    with pytest.raises(ClientError) as caught:
        runtime(bedrock).invoke_model(modelId=bedrock.model, body=invoke_body())
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--provider", "AWSBedrock", "--region", "us-east-1", "--bedrock-api-key", "k",
          "--api-key", "sk"], "--api-key: AWSBedrock takes SigV4"),
        (["--provider", "AWSBedrock", "--bedrock-api-key", "k"], "--region is required"),
        (["--provider", "AWSBedrock", "--region", "us-east-1"],
         "--aws-credentials or --bedrock-api-key is required"),
        (["--provider", "Anthropic", "--api-key", "sk", "--region", "us-east-1"],
         "--region: only for AWSBedrock"),
    ],
)  # fmt: skip
def test_cli_flags_bedrock_needs(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fake-provider", "--port", "1", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
