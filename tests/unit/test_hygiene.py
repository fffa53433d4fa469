"""The secret-hygiene scanner finds what it is for, and not what merely looks near it."""

from __future__ import annotations

import base64

from tests_support.hygiene import leaks

KEY = "sk-test-0123456789abcdef"
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJhdWQiOlsic3dpdGNoeWFyZCJdfQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_it_finds_known_keys_as_written_and_encoded() -> None:
    encoded = base64.b64encode(KEY.encode()).decode()
    assert leaks({"log": f"sent {KEY}", "configmap": encoded}, [KEY]) == [
        "a key made by the test in log",
        "a key made by the test, base64-encoded, in configmap",
    ]


def test_it_finds_secrets_by_their_shape() -> None:
    places = {
        "event": "-----BEGIN EC PRIVATE KEY-----\nMHcC...",
        "status": f'{{"token": "{JWT}"}}',
        "log": "headers: {'Authorization': 'Bearer abcdefgh12345'}",
        "configmap": "[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }
    assert sorted(leaks(places, [KEY])) == [
        "a JSON Web Token in status",
        "a PEM private key in event",
        "an AWS secret access key in configmap",
        "an Authorization header's credential in log",
    ]


def test_certificates_and_the_code_that_sets_headers_are_not_secrets() -> None:
    places = {
        "gateway": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----",
        "config dump": 'headers:replace("authorization", "Bearer " .. value)',
        "lua": 'aws_secret_access_key = "secret_access_key",',
        "metrics": 'switchyard_backend_up{backend="a"} 1',
    }
    assert leaks(places, [KEY]) == []
