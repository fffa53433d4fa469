"""A gateway's workload identity on AWS, as IRSA gives one to a Pod: the IAM role annotated
on the gateway's data-plane ServiceAccount, proven by a token the API server issues for that
ServiceAccount (TokenRequest) for STS's audience. The operator asks for the token and
exchanges it (`tokens.TokenMinter`), so that the probes and the data plane sign alike."""

from __future__ import annotations

import re

from switchyard.kube.client import ApiError, Kube, describe_error
from switchyard.plan.gateway import ObjectKey
from switchyard.tokens import IdentitySource, MintingFailed, WebIdentity

# The annotation IRSA reads on a ServiceAccount, and the audience of its tokens.
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
STS_AUDIENCE = "sts.amazonaws.com"
# The shortest life TokenRequest gives: the token is exchanged at once, then not needed.
TOKEN_SECONDS = 600


def material(account: ObjectKey) -> bytes:
    """What the minter knows the identity's credentials by: the ServiceAccount."""
    return f"{account[0]}/{account[1]}".encode()


def identity_source(kube: Kube, account: ObjectKey) -> IdentitySource:
    namespace, name = account

    async def web_identity() -> WebIdentity:
        try:
            found = await kube.read_service_account(namespace, name)
            if found is None:
                raise MintingFailed(f"ServiceAccount {namespace}/{name} not found")
            role = ((found.get("metadata") or {}).get("annotations") or {}).get(ROLE_ANNOTATION)
            if not role:
                raise MintingFailed(
                    f"ServiceAccount {namespace}/{name} has no {ROLE_ANNOTATION} annotation "
                    "naming the IAM role to assume"
                )
            token = await kube.service_account_token(namespace, name, STS_AUDIENCE, TOKEN_SECONDS)
        except ApiError as error:
            raise MintingFailed(
                f"no token for ServiceAccount {namespace}/{name}: {describe_error(error)}"
            ) from None
        # STS takes [\w+=,.@-]{2,64} as a session name, which CloudTrail shows.
        session = re.sub(r"[^\w+=,.@-]", "-", f"switchyard-{namespace}-{name}")[:64]
        return WebIdentity(str(role), token, session)

    return web_identity
