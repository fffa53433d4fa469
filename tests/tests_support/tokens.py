"""A token issuer of the test's own, signing RS256 JWTs as a cluster's service-account issuer
does, with its public keys as a JWKS: for checks of the gateway that need no API server."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Issuer:
    def __init__(self, issuer: str = "https://kubernetes.default.svc.cluster.local") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex

    def jwks(self) -> str:
        numbers = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
               "n": _uint(numbers.n), "e": _uint(numbers.e)}  # fmt: skip
        return json.dumps({"keys": [key]})

    def token(
        self,
        namespace: str,
        service_account: str,
        audience: str = "switchyard",
        lifetime: float = 600,
        **claims: Any,
    ) -> str:
        """A projected ServiceAccount token's shape: sub, aud, exp and the kubernetes.io claim."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            },
            **claims,
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64(signature)}"
