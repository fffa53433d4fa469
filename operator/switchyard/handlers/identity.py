"""A gateway's workload identity, read from its data-plane ServiceAccount as each cloud's
Kubernetes integration reads a Pod's: on AWS the IAM role annotated on it, proven by a token
the API server issues for that ServiceAccount (TokenRequest) for STS's audience, as IRSA
does; on Google Cloud the service account annotated on it, as GKE workload identity does.
The operator exchanges these (`tokens.TokenMinter`), so that the probes and the data plane
authenticate alike."""

from __future__ import annotations

import re

from switchyard.kube.client import ApiError, Kube, describe_error
from switchyard.plan.gateway import ObjectKey
from switchyard.providers import Exchange
from switchyard.tokens import IdentitySource, MintingFailed, WorkloadIdentity

# The annotation each cloud's integration reads on a ServiceAccount.
ANNOTATIONS = {
    Exchange.AWS_WEB_IDENTITY: ("eks.amazonaws.com/role-arn", "the IAM role to assume"),
    Exchange.GOOGLE_WORKLOAD_IDENTITY: (
        "iam.gke.io/gcp-service-account",
        "the Google service account to act as",
    ),
}
STS_AUDIENCE = "sts.amazonaws.com"
# The shortest life TokenRequest gives: the token is exchanged at once, then not needed.
TOKEN_SECONDS = 600


def material(account: ObjectKey) -> bytes:
    """What the minter knows the identity's credentials by: the ServiceAccount."""
    return f"{account[0]}/{account[1]}".encode()


def identity_source(kube: Kube, account: ObjectKey, exchange: Exchange) -> IdentitySource:
    namespace, name = account
    annotation, meaning = ANNOTATIONS[exchange]

    async def workload_identity() -> WorkloadIdentity:
        try:
            found = await kube.read_service_account(namespace, name)
            if found is None:
                raise MintingFailed(f"ServiceAccount {namespace}/{name} not found")
            principal = ((found.get("metadata") or {}).get("annotations") or {}).get(annotation)
            if not principal:
                raise MintingFailed(
                    f"ServiceAccount {namespace}/{name} has no {annotation} annotation "
                    f"naming {meaning}"
                )
            if exchange != Exchange.AWS_WEB_IDENTITY:
                return WorkloadIdentity(str(principal))
            token = await kube.service_account_token(namespace, name, STS_AUDIENCE, TOKEN_SECONDS)
        except ApiError as error:
            raise MintingFailed(
                f"ServiceAccount {namespace}/{name}: {describe_error(error)}"
            ) from None
        # STS takes [\w+=,.@-]{2,64} as a session name, which CloudTrail shows.
        session = re.sub(r"[^\w+=,.@-]", "-", f"switchyard-{namespace}-{name}")[:64]
        return WorkloadIdentity(str(principal), token, session)

    return workload_identity
