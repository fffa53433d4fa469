"""Where a gateway may send traffic and keys: never to cloud metadata or the API server, and
only where `spec.allowedBackends` says when it is set."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.api.models import AllowedBackends, ModelGatewaySpec
from switchyard.plan.egress import ANY_CLUSTER, ApiServer, refusal
from switchyard.plan.gateway import GatewaySource, plan_gateway
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, endpoint


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.170.2/v2/credentials",  # ECS task credentials
        "http://2852039166/",  # 169.254.169.254 in decimal
        "http://0xa9fea9fe/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://METADATA.google.internal./",
        "http://metadata/",
    ],
)
def test_cloud_metadata_is_never_a_backend(url: str) -> None:
    why = refusal(url, None, ANY_CLUSTER)
    assert why is not None
    assert "metadata" in why


@pytest.mark.parametrize(
    "url",
    [
        "https://kubernetes.default.svc",
        "https://kubernetes.default.svc.cluster.local:443/api",
        "https://kubernetes",
        "https://10.96.0.1",  # the kubernetes Service of this cluster
        "https://10.96.0.1:443/",
        "https://192.0.2.7:6443",  # where the operator reaches it
    ],
)
def test_the_api_server_is_never_a_backend(url: str) -> None:
    cluster = ApiServer.of([("10.96.0.1", 443), ("192.0.2.7", 6443)])
    why = refusal(url, None, cluster)
    assert why is not None
    assert "Kubernetes API server" in why


def test_other_ports_of_the_api_servers_hosts_are_other_services() -> None:
    cluster = ApiServer.of([("127.0.0.1", 6443)])
    assert refusal("http://127.0.0.1:8000", None, cluster) is None
    assert refusal("https://127.0.0.1:6443", None, cluster) is not None


def test_without_allowed_backends_any_other_host_is_allowed() -> None:
    for url in ("https://api.openai.com", "http://vllm.models.svc:8000", "http://10.0.0.5"):
        assert refusal(url, None, ANY_CLUSTER) is None


def test_allowed_backends_pin_hosts_by_name_and_network() -> None:
    allowed = AllowedBackends(
        hostnames=["api.openai.com", "*.openai.azure.com"], cidrs=["10.0.0.0/8"]
    )
    for url in (
        "https://api.openai.com/v1",
        "https://contoso.openai.azure.com",
        "http://10.1.2.3:8000",
    ):
        assert refusal(url, allowed, ANY_CLUSTER) is None, url
    for url in ("https://api.anthropic.com", "https://openai.azure.com", "http://192.168.1.1",
                "https://evil.example/?h=api.openai.com"):  # fmt: skip
        assert refusal(url, allowed, ANY_CLUSTER) is not None, url
    # A pinned network does not let the metadata service in.
    assert refusal("http://169.254.169.254", AllowedBackends(cidrs=["0.0.0.0/0"]), ANY_CLUSTER)


def pinned_gateway(**allowed: Any) -> GatewaySource:
    spec = ModelGatewaySpec.model_validate(
        {"allowedEndpoints": {"namespaces": {"from": "All"}}, "allowedBackends": allowed}
    )
    return GatewaySource(*GATEWAY_KEY, 1, spec)


def test_a_refused_backend_carries_nothing_gets_no_key_and_is_reported() -> None:
    # The default endpoint: OpenAI 3 : Anthropic 1, both at their public APIs.
    plan = plan_gateway(
        GATEWAY_KEY, pinned_gateway(hostnames=["api.openai.com"]), [endpoint("chat")], {}, ALL_KEYS
    )
    [attached] = plan.attached
    weights = {b.name: (b.effective_weight, b.unavailable_reason) for b in attached.backends}
    assert weights == {"oai": (3, None), "claude": (0, "BackendNotAllowed")}
    assert [c.source_key for c in plan.credentials] == ["openai"]
    conditions = {c.type: c for c in plan.outcomes[("team-a", "chat")].conditions}
    assert (conditions["ResolvedRefs"].status, conditions["ResolvedRefs"].reason) == (
        "False", "BackendNotAllowed")  # fmt: skip
    assert "api.anthropic.com" in conditions["ResolvedRefs"].message
    assert conditions["Ready"].status == "False"
    assert "allowedBackends" in conditions["Ready"].message


def test_an_endpoint_with_only_refused_backends_is_not_attached() -> None:
    metadata = {"name": "m", "provider": "OpenAICompatible", "model": "x",
                "url": "http://169.254.169.254",
                "credentialsRef": {"name": "keys", "key": "openai"}}  # fmt: skip
    plan = plan_gateway(
        GATEWAY_KEY, pinned_gateway(), [endpoint("chat", backends=[metadata])], {}, ALL_KEYS
    )
    assert plan.attached == []
    assert plan.credentials == []
    ready = plan.outcomes[("team-a", "chat")].conditions[-1]
    assert (ready.status, ready.reason) == ("False", "NoRoutableBackend")
