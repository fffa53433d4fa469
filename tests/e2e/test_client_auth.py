"""Client authentication in the real Envoy: the renderer's own filters (jwt_authn and the
clients Lua, inline here instead of over ECDS) in front of a recorder that keeps every
request the provider would receive. The operator's side (ModelClients, rotation, real
ServiceAccount tokens) is in tests/integration/test_clients.py."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from e2e.test_lua import Envoy, Recorder, backend, static_config
from gatewaylab import inline_discovered
from ports import free_port
from switchyard.plan.clients import TokenIssuer, key_digest, plan_clients
from switchyard.plan.gateway import plan_gateway
from switchyard.render.envoy import EXTENSION_TYPE, LISTENER_TYPE, render
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, client, endpoint, gateway
from tests_support.tokens import Issuer

pytestmark = pytest.mark.e2e

CHECKOUT_KEY = "sk-checkout-0123456789abcdef"
OTHER_TEAM_KEY = "sk-analytics-fedcba9876543210"


def inlined(config: dict[str, Any], extensions: list[dict[str, Any]]) -> dict[str, Any]:
    """The static config with each ECDS-discovered filter given its config inline."""
    config = copy.deepcopy(config)
    inline_discovered(config["static_resources"]["listeners"], extensions)
    return config


@dataclass
class Lab:
    envoy: Envoy
    recorder: Recorder
    issuer: Issuer

    def call(
        self, headers: dict[str, str], model: str = "chat", path: str = "/v1/chat/completions"
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.envoy.port}{path}",
            data=json.dumps({"model": model, "messages": []}).encode(),
            method="POST",
            headers={"content-type": "application/json", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir: Path = tmp_path_factory.mktemp("clients")
    credentials = workdir / "credentials"
    credentials.mkdir()
    recorder = Recorder()
    issuer = Issuer()
    envoy: Envoy | None = None
    try:
        upstream = recorder.url
        endpoints = [
            endpoint("chat", backends=[backend("a", "OpenAICompatible", "m", upstream, "openai")]),
            endpoint(
                "claude", backends=[backend("c", "Anthropic", "claude-x", upstream, "anthropic")]
            ),
            # Admits clients of every namespace, but the checkout client narrows itself.
            endpoint("embed", backends=[backend("e", "OpenAICompatible", "m", upstream, "openai")]),
            endpoint(
                "private",
                namespace="team-b",
                backends=[backend("p", "OpenAICompatible", "m", upstream, "openai")],
            ),
        ]
        for source in endpoints:
            assert source.spec is not None
            if source.name == "embed":
                source.spec.allowed_clients.namespaces.from_ = "All"  # type: ignore[assignment]
        keys = {**ALL_KEYS, ("team-b", "keys"): ALL_KEYS[("team-a", "keys")]}
        plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, keys)
        for route in (b for e in plan.attached for b in e.backends):
            assert route.credentials_key is not None
            (credentials / route.credentials_key).write_text(f"sk-provider-{route.name}")
        clients = plan_clients(
            GATEWAY_KEY,
            gateway(),
            [
                client(
                    "checkout",
                    "team-a",
                    apiKeyRef={"name": "ck", "key": "k"},
                    serviceAccounts=["checkout"],
                    models=["chat", "claude"],
                ),
                client("analytics", "team-c", apiKeyRef={"name": "ak", "key": "k"}),
            ],
            plan,
            {},
            {
                ("team-a", "ck"): {"k": key_digest(CHECKOUT_KEY.encode())},
                ("team-c", "ak"): {"k": key_digest(OTHER_TEAM_KEY.encode())},
            },
        )
        issued = TokenIssuer(issuer.issuer, issuer.jwks())
        resources = render(plan, free_port(), clients=clients, issuer=issued)
        config = inlined(static_config(resources, free_port()), resources[EXTENSION_TYPE])
        envoy = Envoy(config, credentials, workdir)
        yield Lab(envoy, recorder, issuer)
    finally:
        if envoy is not None:
            envoy.stop()
        recorder.stop()


def test_a_request_without_a_known_credential_gets_401_in_its_apis_format(lab: Lab) -> None:
    for headers in (
        {},
        {"authorization": "Bearer sk-nobody"},
        {"x-api-key": "sk-nobody"},
        {"authorization": "Basic " + CHECKOUT_KEY},
        {"authorization": "Bearer " + CHECKOUT_KEY + "x"},
    ):
        lab.recorder.received.clear()
        status, body = lab.call(headers)
        assert status == 401, headers
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
        status, body = lab.call(headers, model="claude", path="/v1/messages")
        assert status == 401
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
        assert lab.recorder.received == []  # no provider was contacted


def test_the_key_in_any_sdks_header_is_served_and_never_forwarded(lab: Lab) -> None:
    for headers in (
        {"authorization": "Bearer " + CHECKOUT_KEY},
        {"authorization": "bearer  " + CHECKOUT_KEY},
        {"x-api-key": CHECKOUT_KEY},
        {"api-key": CHECKOUT_KEY},
    ):
        lab.recorder.received.clear()
        status, _ = lab.call(headers)
        assert status == 200, headers
        [received] = lab.recorder.received
        assert CHECKOUT_KEY not in json.dumps(received.headers)
        assert received.headers["authorization"].startswith("Bearer sk-provider-")


def test_the_official_openai_sdk_is_served_with_the_clients_key(lab: Lab) -> None:
    sdk = openai.OpenAI(
        api_key=CHECKOUT_KEY, base_url=f"http://127.0.0.1:{lab.envoy.port}/v1", max_retries=0
    )
    sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    stranger = openai.OpenAI(
        api_key="sk-stranger", base_url=f"http://127.0.0.1:{lab.envoy.port}/v1", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])


def test_each_sdk_lists_the_models_its_client_may_call(lab: Lab) -> None:
    base = f"http://127.0.0.1:{lab.envoy.port}"
    checkout_openai = openai.OpenAI(api_key=CHECKOUT_KEY, base_url=f"{base}/v1", max_retries=0)
    checkout_anthropic = anthropic.Anthropic(api_key=CHECKOUT_KEY, base_url=base, max_retries=0)
    analytics = openai.OpenAI(api_key=OTHER_TEAM_KEY, base_url=f"{base}/v1", max_retries=0)
    assert [m.id for m in checkout_openai.models.list()] == ["chat", "claude"]
    assert [m.id for m in checkout_anthropic.models.list()] == ["chat", "claude"]
    assert [m.id for m in analytics.models.list()] == ["embed"]
    stranger = anthropic.Anthropic(api_key="sk-stranger", base_url=base, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.models.list()


def test_a_known_client_gets_403_for_a_model_it_may_not_call(lab: Lab) -> None:
    lab.recorder.received.clear()
    # Narrowed away by its own spec.models:
    status, body = lab.call({"authorization": "Bearer " + CHECKOUT_KEY}, model="embed")
    assert (status, body["error"]["code"]) == (403, "model_not_allowed")
    # Another team's endpoint, which admits its own namespace only:
    status, body = lab.call({"x-api-key": CHECKOUT_KEY}, model="private", path="/v1/messages")
    assert (status, body["error"]["type"]) == (403, "permission_error")
    # Another team's client, on a model whose endpoint admits team-a only:
    status, _ = lab.call({"authorization": "Bearer " + OTHER_TEAM_KEY})
    assert status == 403
    assert lab.recorder.received == []
    # ... and on the endpoint that admits every namespace:
    status, _ = lab.call({"authorization": "Bearer " + OTHER_TEAM_KEY}, model="embed")
    assert status == 200
    # A model the gateway does not serve is a 404 to a known client, a 401 to anyone else.
    assert lab.call({"x-api-key": CHECKOUT_KEY}, model="nope")[0] == 404
    assert lab.call({}, model="nope")[0] == 401


def test_a_service_account_token_for_the_gateway_is_served(lab: Lab) -> None:
    token = lab.issuer.token("team-a", "checkout")
    lab.recorder.received.clear()
    status, _ = lab.call({"authorization": "Bearer " + token})
    assert status == 200
    [received] = lab.recorder.received
    assert token not in json.dumps(received.headers)


def test_tokens_of_another_audience_namespace_signer_or_time_are_refused(lab: Lab) -> None:
    refused = {
        "audience": lab.issuer.token("team-a", "checkout", audience="https://kubernetes.default"),
        "namespace": lab.issuer.token("team-b", "checkout"),
        "account": lab.issuer.token("team-a", "default"),
        # Expired beyond the 60 s of clock skew that is allowed:
        "expired": lab.issuer.token("team-a", "checkout", lifetime=-300),
        "signer": Issuer().token("team-a", "checkout"),
        "issuer": Issuer("https://elsewhere").token("team-a", "checkout"),
    }
    for why, token in refused.items():
        status, _ = lab.call({"authorization": "Bearer " + token})
        assert status == 401, why


def test_the_clients_filter_names_no_key_in_the_rendered_config(lab: Lab) -> None:
    del lab
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)
    clients = plan_clients(
        GATEWAY_KEY, gateway(), [client("c", "team-a", apiKeyRef={"name": "s", "key": "k"})],
        plan, {}, {("team-a", "s"): {"k": key_digest(CHECKOUT_KEY.encode())}},
    )  # fmt: skip
    rendered = json.dumps(render(plan, 8080, clients=clients))
    assert CHECKOUT_KEY not in rendered
    assert key_digest(CHECKOUT_KEY.encode()) in rendered
    assert rendered.count("config_discovery") == 2
    [listener] = render(plan, 8080, clients=clients)[LISTENER_TYPE]
    assert CHECKOUT_KEY not in json.dumps(listener)
