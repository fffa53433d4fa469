"""Amazon Bedrock through the gateway: both SDKs, whole and streamed, each attempt signed with
SigV4 by the data plane (or sent with a Bedrock API key); Claude through InvokeModel for
Anthropic-format clients and through Converse for OpenAI-format ones, any other model through
Converse for both; Bedrock's event streams turned back into each client's stream and its
errors into each client's format; a wrong AWS secret reported as CredentialsInvalid with its
traffic moved; and one endpoint with Claude on Anthropic, Bedrock and Vertex AI failing over
cloud to cloud without a failed request."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from e2e.cloudlab import SECRET, GatewayLab, gateway_lab
from gatewaylab import (
    CLIENT_KEY,
    BedrockProcess,
    FakeProcess,
    VertexProcess,
    chat,
    send_sync,
)
from switchyard.fakes.sts import FakeSTS
from tests_support.cluster import Cluster, eventually

pytestmark = pytest.mark.e2e

CLAUDE_VERTEX = "claude-x@20250101"
CLAUDE_BEDROCK = "anthropic.claude-x-v1:0"
LLAMA = "meta.llama3-1-70b-instruct-v1:0"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WRONG_CREDENTIALS = "[default]\naws_access_key_id = {}\naws_secret_access_key = not-it\n"


@dataclass
class AwsLab(GatewayLab):
    bedrock: BedrockProcess
    vertex: VertexProcess
    claude: FakeProcess

    def bedrock_backend(self, key: str = "aws", **fields: Any) -> dict[str, Any]:
        return {
            "name": "bedrock",
            "provider": "AWSBedrock",
            "model": self.bedrock.model,
            "region": self.bedrock.region,
            # The fake's address in place of the region's endpoint, as a VPC endpoint.
            "url": self.bedrock.url,
            "authentication": "SigV4",
            "credentialsRef": {"name": SECRET, "key": key},
            **fields,
        }

    def bedrock_status(self, model: str) -> dict[str, Any]:
        endpoint = self.endpoint(model) or {}
        for entry in (endpoint.get("status") or {}).get("backends") or []:
            if entry.get("name") == "bedrock":
                return dict(entry)
        return {}

    def vertex_backend(self) -> dict[str, Any]:
        return {
            "name": "vertex",
            "provider": "GCPVertexAI",
            "model": CLAUDE_VERTEX,
            "region": self.vertex.region,
            "project": self.vertex.project,
            "url": self.vertex.url,
            "credentialsRef": {"name": SECRET, "key": "gcp"},
        }

    def anthropic_backend(self) -> dict[str, Any]:
        return {
            "name": "anthropic",
            "provider": "Anthropic",
            "model": self.claude.model,
            "url": self.claude.url,
            "credentialsRef": {"name": SECRET, "key": "anthropic"},
        }


@pytest.fixture(scope="module")
def lab(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsLab]:
    bedrock = BedrockProcess(models=(CLAUDE_BEDROCK, LLAMA))
    vertex = VertexProcess(models=(CLAUDE_VERTEX,))
    claude = FakeProcess("Anthropic", f"sk-ant-{uuid.uuid4().hex[:8]}", "claude-x")
    credentials = {
        "aws": bedrock.credentials_file_text,
        "aws-wrong": WRONG_CREDENTIALS.format(bedrock.access_key_id),
        "bedrock-api-key": bedrock.api_key,
        "gcp": vertex.service_account_key,
        "anthropic": claude.api_key,
    }
    try:
        with gateway_lab(cluster, tmp_path_factory, "sy-bedrock", credentials) as gateway:
            yield AwsLab(
                gateway.cluster, gateway.operator, gateway.namespace, gateway.envoy, bedrock,
                vertex, claude,
            )  # fmt: skip
    finally:
        for fake in (bedrock, vertex, claude):
            fake.stop()


def _gpt(lab: AwsLab) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def _claude(lab: AwsLab) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=lab.envoy.url, api_key=CLIENT_KEY, max_retries=0)


def _ask_both_sdks(lab: AwsLab, model: str, bedrock_model: str = CLAUDE_BEDROCK) -> None:
    """Both SDKs, whole and streamed: each answer names the Bedrock fake's model."""
    expected = f"AWSBedrock {bedrock_model}"
    messages: Any = [{"role": "user", "content": "hello"}]
    gpt = _gpt(lab)
    answer = gpt.chat.completions.create(model=model, messages=messages)
    assert expected in (answer.choices[0].message.content or "")
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    chunks = list(
        gpt.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert expected in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0
    claude = _claude(lab)
    message = claude.messages.create(model=model, max_tokens=64, messages=messages)
    assert message.content[0].type == "text"
    assert expected in message.content[0].text
    with claude.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
        texts = list(stream.text_stream)
    # Event by event, as Bedrock's frames came: the reply's words, not one block.
    assert len(texts) > 3
    assert expected in "".join(texts)


def test_both_sdks_reach_claude_on_bedrock_signed_with_sigv4(lab: AwsLab) -> None:
    lab.serve("bedrock-claude", [lab.bedrock_backend()])
    # The probe, signed in Python, passes as the data plane's signature does.
    eventually(lambda: (lab.bedrock_status("bedrock-claude") or {}).get("lastProbeTime"))
    assert "reason" not in lab.bedrock_status("bedrock-claude")
    lab.bedrock.forget_requests()
    _ask_both_sdks(lab, "bedrock-claude")
    # One attempt each: the first is signed for the host it goes to, not the gateway's.
    # OpenAI's format through Converse, Anthropic's through InvokeModel.
    requests = lab.bedrock.traffic()
    model = lab.bedrock.model
    assert [r["path"] for r in requests] == [
        f"/model/{model}/converse",
        f"/model/{model}/converse-stream",
        f"/model/{model}/invoke",
        f"/model/{model}/invoke-with-response-stream",
    ]
    for record in requests:
        body = record["body"]
        assert "model" not in body
        assert "stream" not in body
        if record["path"].endswith("/converse") or record["path"].endswith("/converse-stream"):
            assert body["messages"] == [{"role": "user", "content": [{"text": "hello"}]}]
        else:
            assert body["anthropic_version"] == "bedrock-2023-05-31"
        authorization = record["headers"]["authorization"]
        assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={lab.bedrock.access_key_id}/")
        assert f"/{lab.bedrock.region}/bedrock/aws4_request" in authorization
        assert "anthropic-version" not in record["headers"]


def test_any_bedrock_model_serves_both_sdks_through_converse(lab: AwsLab) -> None:
    lab.serve("llama", [lab.bedrock_backend(model=LLAMA)])
    # Its probe (ListAsyncInvokes: CountTokens serves Claude only) passes, signed.
    eventually(lambda: (lab.bedrock_status("llama") or {}).get("lastProbeTime"))
    assert "reason" not in lab.bedrock_status("llama")
    lab.bedrock.forget_requests()
    _ask_both_sdks(lab, "llama", LLAMA)
    paths = [r["path"] for r in lab.bedrock.traffic()]
    assert paths == [f"/model/{LLAMA}/converse", f"/model/{LLAMA}/converse-stream"] * 2
    # An Anthropic request's fields, as Converse names them.
    anthropic_request = lab.bedrock.traffic()[-2]["body"]
    assert anthropic_request["inferenceConfig"] == {"maxTokens": 64}


def test_tool_calls_round_trip_through_converse(lab: AwsLab) -> None:
    lab.serve("llama-tools", [lab.bedrock_backend(model=LLAMA)])
    gpt = _gpt(lab)
    question: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = gpt.chat.completions.create(
        model="llama-tools", messages=question, tools=[WEATHER], tool_choice="required"
    )
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "sample"},
    )  # fmt: skip
    assert call.id.startswith("tooluse_")
    answered = [
        *question,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
    ]
    second = gpt.chat.completions.create(model="llama-tools", messages=answered, tools=[WEATHER])
    assert second.choices[0].message.content == f"Tool results: {call.id}=Sunny"
    sent = lab.bedrock.traffic()[-1]["body"]
    assert sent["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "Sunny"}]}}
    ]

    # Streamed: the arguments arrive in fragments, as ConverseStream sent them.
    stream = gpt.chat.completions.create(
        model="llama-tools", messages=question, tools=[WEATHER], tool_choice="required",
        stream=True,
    )  # fmt: skip
    fragments = [
        delta.function.arguments or ""
        for chunk in stream
        if chunk.choices
        for delta in chunk.choices[0].delta.tool_calls or []
        if delta.function
    ]
    assert len([f for f in fragments if f]) > 1
    assert json.loads("".join(fragments)) == {"city": "sample"}

    # The Anthropic SDK, whole: a tool_use block.
    any_tool: Any = {"type": "any"}
    tools: Any = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    message = _claude(lab).messages.create(
        model="llama-tools", max_tokens=100, messages=question, tool_choice=any_tool, tools=tools
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "sample"})
    ]


def test_bedrock_errors_reach_each_client_in_its_format(lab: AwsLab) -> None:
    lab.serve("bedrock-errors", [lab.bedrock_backend()])
    lab.serve("llama-errors", [lab.bedrock_backend(model=LLAMA)])
    messages: Any = [{"role": "user", "content": "hello"}]
    # Bedrock's 400 ({"message": ...}), for the OpenAI SDK through Converse...
    with pytest.raises(openai.BadRequestError) as refused:
        _gpt(lab).chat.completions.create(model="llama-errors", messages=messages, top_p=1.5)
    error = refused.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "inferenceConfig.topP" in error["message"]
    # ...and for the Anthropic SDK through InvokeModel, whose answer is not translated.
    with pytest.raises(anthropic.BadRequestError) as invalid:
        _claude(lab).messages.create(
            model="bedrock-errors", max_tokens=64, messages=messages, extra_body={"top_k": -1}
        )
    body = invalid.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]
    # What Converse cannot carry is the client's to fix, named by its field.
    image: Any = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\]\.content\[0\]"):
        _claude(lab).messages.create(
            model="llama-errors", max_tokens=64, messages=[{"role": "user", "content": [image]}]
        )


@contextmanager
def running_sts(sts: FakeSTS) -> Iterator[FakeSTS]:
    """The STS fake (and EKS Pod Identity agent) on a loop of its own, and the operator's
    AWS SDK pointed at it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(sts.start(), loop).result(10)
    os.environ["AWS_ENDPOINT_URL_STS"] = sts.url
    os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"{sts.url}/v1/credentials"
    try:
        yield sts
    finally:
        del os.environ["AWS_ENDPOINT_URL_STS"]
        del os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        asyncio.run_coroutine_threadsafe(sts.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_bedrock_signs_as_the_gateways_workload_identity(lab: AwsLab) -> None:
    """No credentialsRef: the operator requests a token for the gateway's ServiceAccount and
    exchanges it at STS (AssumeRoleWithWebIdentity, as IRSA) for the IAM role annotated on
    it, or with none annotated at the EKS Pod Identity agent for its association's role; the
    data plane and the probes sign with those temporary credentials."""
    discovery = json.loads(lab.cluster.kubectl("get", "--raw", "/.well-known/openid-configuration"))
    jwks = lab.cluster.kubectl("get", "--raw", "/openid/v1/jwks")
    role = "arn:aws:iam::123456789012:role/switchyard-bedrock"
    subject = f"system:serviceaccount:{lab.namespace}:bedrock-caller"
    associations = {(lab.namespace, "pod-identity-caller"): role}
    sts = FakeSTS(
        jwks, discovery["issuer"], {role: subject}, bedrocks=[lab.bedrock],
        associations=associations,
    )  # fmt: skip
    accounts = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": lab.namespace, "annotations": annotations}}
        for name, annotations in (
            ("bedrock-caller", {"eks.amazonaws.com/role-arn": role}), ("no-role", {}),
            ("pod-identity-caller", {}),
        )
    ]  # fmt: skip
    backend = lab.bedrock_backend(model=LLAMA)
    del backend["credentialsRef"]
    with running_sts(sts):
        lab.cluster.apply(*accounts)
        try:
            lab.run_gateway_as("bedrock-caller")
            lab.serve("bedrock-irsa", [backend])
            eventually(lambda: (lab.bedrock_status("bedrock-irsa") or {}).get("lastProbeTime"))
            assert "reason" not in lab.bedrock_status("bedrock-irsa")
            lab.bedrock.forget_requests()
            _ask_both_sdks(lab, "bedrock-irsa", LLAMA)
            issued = {c.access_key_id: c for c in sts.issued}
            for record in lab.bedrock.traffic():
                authorization = record["headers"]["authorization"]
                key = authorization.split("Credential=", 1)[1].split("/", 1)[0]
                assert key in issued
                assert record["headers"]["x-amz-security-token"] == issued[key].session_token
            # Minted once and kept, not per pass or probe.
            assert len(sts.issued) == 1
            lab.assert_no_secret_readable(
                [c.secret_access_key for c in sts.issued]
                + [c.session_token or "" for c in sts.issued]
            )

            # No role annotated: EKS Pod Identity, whose association names the role.
            lab.run_gateway_as("pod-identity-caller")
            lab.serve("bedrock-pod-identity", [backend])
            eventually(lambda: len(sts.issued) == 2)
            signed_with = f"Credential={sts.issued[1].access_key_id}/"

            def signed_by_pod_identity() -> bool:
                # The IRSA credentials still work until the new ones reach Envoy, and each
                # of its workers reads them again within a second.
                lab.bedrock.forget_requests()
                send_sync(lab.chat_url, chat("bedrock-pod-identity"), 8, 4)
                signatures = [r["headers"]["authorization"] for r in lab.bedrock.traffic()]
                return all(signed_with in signature for signature in signatures)

            eventually(signed_by_pod_identity, timeout=30)
            lab.bedrock.forget_requests()
            _ask_both_sdks(lab, "bedrock-pod-identity", LLAMA)
            for record in lab.bedrock.traffic():
                assert signed_with in record["headers"]["authorization"]

            # Neither a role nor an association: the backend says why, and its traffic moves.
            lab.run_gateway_as("no-role")
            lab.apply_endpoint("bedrock-no-role", [backend, lab.anthropic_backend()])
            reported = lab.backend_reported("bedrock-no-role", "bedrock", "CredentialsInvalid")
            assert reported["message"] == (
                f"ServiceAccount {lab.namespace}/no-role has no eks.amazonaws.com/role-arn "
                "annotation (IRSA), and EKS Pod Identity gave it no credentials (HTTP 400: is it "
                "in a Pod Identity association?)"
            )
            lab.assert_served_only_by("bedrock-no-role", lab.claude.port)
        finally:
            lab.run_gateway_as(None)
    # A gateway without one cannot lend its identity: refused in the endpoint's conditions.
    eventually(
        lambda: (
            "spec.dataPlane.serviceAccountName"
            in json.dumps((lab.endpoint("bedrock-irsa") or {}).get("status", {}).get("conditions"))
        )
    )


def test_a_bedrock_api_key_is_sent_as_a_bearer_token(lab: AwsLab) -> None:
    backend = lab.bedrock_backend("bedrock-api-key", authentication="APIKey", name="bedrock-key")
    lab.serve("bedrock-key", [backend])
    lab.bedrock.forget_requests()
    outcome = send_sync(lab.chat_url, chat("bedrock-key"), 10, 2)
    assert outcome.statuses == {200: 10}
    headers = [r["headers"] for r in lab.bedrock.traffic()]
    assert {h["authorization"] for h in headers} == {f"Bearer {lab.bedrock.api_key}"}


def test_a_wrong_aws_secret_is_credentials_invalid_and_traffic_moves(lab: AwsLab) -> None:
    lab.apply_endpoint("bedrock-wrong", [lab.bedrock_backend("aws-wrong"), lab.anthropic_backend()])
    backend = lab.backend_reported("bedrock-wrong", "bedrock", "CredentialsInvalid")
    assert backend["message"] == "HTTP 403: the key was refused"
    lab.assert_served_only_by("bedrock-wrong", lab.claude.port)


def test_claude_fails_over_cloud_to_cloud_without_a_failed_request(lab: AwsLab) -> None:
    lab.serve("claude", [lab.anthropic_backend(), lab.bedrock_backend(), lab.vertex_backend()])
    fakes = {"anthropic": lab.claude, "bedrock": lab.bedrock, "vertex": lab.vertex}
    everyone = {fake.port for fake in fakes.values()}

    def all_serve() -> bool:
        outcome = send_sync(lab.chat_url, chat("claude"), 60, 4)
        return outcome.statuses[200] == 60 and set(outcome.ports) == everyone

    for name, down in fakes.items():
        eventually(all_serve, timeout=60, interval=1)
        down.fault(status=500)
        try:
            outcome = send_sync(lab.chat_url, chat("claude"), 100, 8)
            assert outcome.statuses == {200: 100}, (name, outcome.statuses)
            assert down.port not in outcome.ports
        finally:
            down.heal()


def test_no_aws_secret_anywhere_a_person_or_program_can_read(lab: AwsLab) -> None:
    lab.assert_no_secret_readable(
        [lab.bedrock.secret_access_key, lab.bedrock.api_key, lab.claude.api_key]
    )
