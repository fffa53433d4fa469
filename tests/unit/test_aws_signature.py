"""The probes' SigV4 signature is botocore's, to the byte: the fake Bedrock verifies with
botocore, and so does AWS."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from switchyard.providers import Placement, aws_signature, provider

FILE = "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = s3cr3t\n"
NOW = datetime.datetime(2026, 11, 30, 9, 0, 0, tzinfo=datetime.UTC)


def botocore_signature(request: aws_signature.Signable, payload: str, token: str | None) -> str:
    """botocore's signature of `request` at NOW, over the same headers ours signs (its
    add_auth would take the clock's time)."""
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "s3cr3t", token), "bedrock", "us-east-1")
    headers = {"content-type": "application/json", "x-amz-content-sha256": payload}
    aws = AWSRequest(method=request.method, url=request.url, data=request.body, headers=headers)
    aws.context["timestamp"] = NOW.strftime("%Y%m%dT%H%M%SZ")
    signer._modify_request_before_signing(aws)
    string_to_sign = signer.string_to_sign(aws, signer.canonical_request(aws))
    return str(signer.signature(string_to_sign, aws))


@pytest.mark.parametrize("token", [None, "session-token"])
def test_the_probe_of_a_signed_bedrock_backend_is_signed_as_botocore_signs(
    token: str | None,
) -> None:
    text = FILE + (f"aws_session_token = {token}\n" if token else "")
    terms = provider("AWSBedrock", "us.anthropic.claude-x-v1:0", "SigV4")
    placement = Placement("", "us.anthropic.claude-x-v1:0", region="us-east-1")
    probe = terms.probe("https://bedrock-runtime.us-east-1.amazonaws.com", placement, text)
    assert probe.method == "POST"
    assert probe.url.endswith("/model/us.anthropic.claude-x-v1%3A0/count-tokens")
    assert probe.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    # The same request, unsigned, signed at a known time by both.
    unsigned = replace(probe, headers={"content-type": "application/json"})
    headers = aws_signature.sign(unsigned, text, "us-east-1", "bedrock", NOW)
    expected = botocore_signature(unsigned, headers["x-amz-content-sha256"], token)
    assert headers["authorization"].endswith(f", Signature={expected}")
    assert ("x-amz-security-token" in headers) == (token is not None)


def test_what_is_not_a_credentials_file_is_named_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="not an AWS shared-credentials file") as raised:
        aws_signature.credentials("ABSK-a-bedrock-api-key")
    assert "ABSK" not in str(raised.value)
