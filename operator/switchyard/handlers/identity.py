"""A gateway's workload identity, read from its data-plane ServiceAccount as each cloud's
Kubernetes integration reads a Pod's. On AWS: the IAM role annotated on it, proven by a token
the API server issues for that ServiceAccount (TokenRequest) for STS's audience, as IRSA
does; with no role annotated, a token for EKS Pod Identity's audience, which the node's agent
exchanges for the role of the ServiceAccount's Pod Identity association. On Google Cloud: the
service account annotated on it, as GKE workload identity does. The operator exchanges these
(`tokens.TokenMinter`), so that the probes and the data plane authenticate alike."""

from __future__ import annotations

import re

from switchyard.kube.client import ApiError, Kube, describe_error
from switchyard.plan.gateway import ObjectKey
from switchyard.providers import Exchange
from switchyard.tokens import IdentitySource, MintingFailed, WorkloadIdentity

AWS_ROLE = "eks.amazonaws.com/role-arn"
GOOGLE_ACCOUNT = "iam.gke.io/gcp-service-account"
STS_AUDIENCE = "sts.amazonaws.com"
POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
# The shortest life TokenRequest gives: the token is exchanged at once, then not needed.
TOKEN_SECONDS = 600


def material(account: ObjectKey) -> bytes:
    """What the minter knows the identity's credentials by: the ServiceAccount."""
    return f"{account[0]}/{account[1]}".encode()


def identity_source(kube: Kube, account: ObjectKey, exchange: Exchange) -> IdentitySource:
    namespace, name = account
    named = f"{namespace}/{name}"

    async def workload_identity() -> WorkloadIdentity:
        try:
            found = await kube.read_service_account(namespace, name)
            if found is None:
                raise MintingFailed(f"ServiceAccount {named} not found")
            annotations = (found.get("metadata") or {}).get("annotations") or {}
            if exchange == Exchange.GOOGLE_WORKLOAD_IDENTITY:
                if not (google := annotations.get(GOOGLE_ACCOUNT)):
                    raise MintingFailed(
                        f"ServiceAccount {named} has no {GOOGLE_ACCOUNT} annotation naming the "
                        "Google service account to act as"
                    )
                return WorkloadIdentity(str(google), account=named)
            role = str(annotations.get(AWS_ROLE) or "")
            audience = STS_AUDIENCE if role else POD_IDENTITY_AUDIENCE
            token = await kube.service_account_token(namespace, name, audience, TOKEN_SECONDS)
        except ApiError as error:
            raise MintingFailed(f"ServiceAccount {named}: {describe_error(error)}") from None
        # STS takes [\w+=,.@-]{2,64} as a session name, which CloudTrail shows.
        session = re.sub(r"[^\w+=,.@-]", "-", f"switchyard-{namespace}-{name}")[:64]
        return WorkloadIdentity(role, token, session, named)

    return workload_identity
