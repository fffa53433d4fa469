"""Real traffic through an operator-managed Envoy: splits, shaping, streaming, failover."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gatewaylab import CLIENT_HEADERS, CLIENT_KEY, LocalEnvoy, Outcome, chat, send_sync
from tests_support import hygiene
from tests_support.cluster import condition, eventually

from .conftest import Lab

pytestmark = pytest.mark.e2e

SPLIT_REQUESTS = 5000
TOLERANCE = 0.02


def shares_by_name(lab: Lab, outcome: Outcome) -> dict[str, float]:
    by_port = outcome.shares()
    return {name: by_port.get(fake.port, 0.0) for name, fake in lab.fakes.items()}


@pytest.mark.parametrize(
    ("case", "weights", "expected"),
    [
        ("two-way", {"local-a": (70, 0), "local-b": (30, 0)}, {"local-a": 0.7, "local-b": 0.3}),
        (
            "three-way",
            {"local-a": (50, 0), "local-b": (30, 0), "local-c": (20, 0)},
            {"local-a": 0.5, "local-b": 0.3, "local-c": 0.2},
        ),
        (
            "two-tiers",
            {"local-a": (3, 0), "local-b": (1, 0), "local-c": (1, 1)},
            {"local-a": 0.75, "local-b": 0.25, "local-c": 0.0},
        ),
    ],
)
def test_split_matches_the_configured_shares(
    lab: Lab, case: str, weights: dict[str, tuple[int, int]], expected: dict[str, float]
) -> None:
    model = f"split-{case}"
    lab.serve(model, [lab.backend(name, w, p) for name, (w, p) in weights.items()])
    outcome = send_sync(lab.url, chat(model), SPLIT_REQUESTS)
    assert outcome.failed == 0, outcome.statuses
    observed = shares_by_name(lab, outcome)
    for name, share in expected.items():
        assert abs(observed[name] - share) <= TOLERANCE, f"{name}: {observed[name]:.3f} vs {share}"


def test_each_provider_gets_its_own_path_auth_and_model(lab: Lab) -> None:
    model = "shaped"
    lab.serve(model, [lab.backend("openai"), lab.backend("azure"), lab.backend("anthropic")])
    for fake in lab.fakes.values():
        fake.forget_requests()
    outcome = send_sync(lab.url, chat(model), 60, concurrency=4)
    assert outcome.failed == 0, outcome.statuses
    keys = {name: fake.api_key for name, fake in lab.fakes.items()}

    [openai, *_] = lab.fakes["openai"].traffic()
    assert openai["path"] == "/v1/chat/completions"
    assert openai["headers"]["authorization"] == f"Bearer {keys['openai']}"
    assert openai["body"]["model"] == "gpt-4o"

    [azure, *_] = lab.fakes["azure"].traffic()
    assert azure["path"] == "/openai/deployments/chat-deploy/chat/completions"
    assert azure["query"] == {"api-version": "2024-10-21"}
    assert azure["headers"]["api-key"] == keys["azure"]

    # Anthropic gets its own Messages API, never its OpenAI-compatible layer.
    [anthropic, *_] = lab.fakes["anthropic"].traffic()
    assert anthropic["path"] == "/v1/messages"
    assert anthropic["body"]["max_tokens"] == 4096
    assert anthropic["headers"]["x-api-key"] == keys["anthropic"]
    assert anthropic["headers"]["anthropic-version"] == "2023-06-01"
    assert anthropic["body"]["model"] == "claude-x"

    # No provider ever sees another's key, or the internal scratch headers.
    for name in ("openai", "azure", "anthropic"):
        for recorded in lab.fakes[name].traffic():
            text = json.dumps(recorded["headers"])
            assert not [other for other, key in keys.items() if other != name and key in text]
            assert not [h for h in recorded["headers"] if h.startswith("x-sy-")]


def test_both_chat_apis_reach_every_backend_and_the_rest_only_theirs(lab: Lab) -> None:
    """Messages and Chat Completions are split over OpenAI and Anthropic alike, each
    provider receiving its own API; embeddings go to the backend that has them."""
    model = "both-apis"
    lab.serve(model, [lab.backend("openai"), lab.backend("anthropic")])
    for fake in ("openai", "anthropic"):
        lab.fakes[fake].forget_requests()
    url = f"{lab.envoy.url}/v1/messages"
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    outcome = send_sync(url, body, 20, concurrency=2)
    assert outcome.statuses[200] == 20
    assert set(outcome.ports) == {lab.port("anthropic"), lab.port("openai")}
    assert {r["path"] for r in lab.fakes["openai"].traffic()} == {"/v1/chat/completions"}
    assert {r["path"] for r in lab.fakes["anthropic"].traffic()} == {"/v1/messages"}
    embeddings = send_sync(
        f"{lab.envoy.url}/v1/embeddings", {"model": model, "input": "hi"}, 10, concurrency=2
    )
    assert embeddings.statuses[200] == 10
    assert sum(r["path"] == "/v1/embeddings" for r in lab.fakes["openai"].traffic()) == 10
    assert not [r for r in lab.fakes["anthropic"].traffic() if r["path"] != "/v1/messages"]


def test_a_weight_change_reaches_live_traffic_within_two_seconds(lab: Lab) -> None:
    model = "reweighted"
    lab.serve(model, [lab.backend("local-a", 1), lab.backend("local-b", 0)])
    applied = time.monotonic()
    lab.cluster.apply(
        lab.endpoint_manifest(model, [lab.backend("local-a", 0), lab.backend("local-b", 1)])
    )
    port_b = lab.port("local-b")

    def switched() -> bool:
        return set(send_sync(lab.url, chat(model), 10, concurrency=2).ports) == {port_b}

    eventually(switched, timeout=10, interval=0.05)
    assert time.monotonic() - applied < 2.0


def test_streaming_passes_through_unbuffered(lab: Lab) -> None:
    model = "streamed"
    lab.serve(model, [lab.backend("slow")])  # 0.2 s between chunks

    async def stream() -> tuple[float, list[float]]:
        arrivals = []
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(
                lab.url, json=chat(model, stream=True), headers=CLIENT_HEADERS
            ) as reply:
                assert reply.headers["content-type"].startswith("text/event-stream")
                async for line in reply.content:
                    if line.startswith(b"data: "):
                        arrivals.append(time.monotonic())
        return started, arrivals

    started, arrivals = asyncio.run(stream())
    assert len(arrivals) >= 5
    # Each chunk arrives when it is produced, not all together at the end.
    assert arrivals[-1] - arrivals[0] >= 1.0
    assert arrivals[0] - started < 0.5


@pytest.mark.parametrize(
    ("case", "fault"),
    [
        ("refused", {"refuse": True}),
        ("500", {"status": 500}),
        ("503", {"status": 503}),
        ("hang", {"hang": True}),
    ],
)
def test_a_failing_provider_costs_no_request_and_gets_its_share_back(
    lab: Lab, case: str, fault: dict[str, Any]
) -> None:
    model = f"failover-{case}"
    lab.serve(
        model,
        [lab.backend("local-a", 1), lab.backend("local-b", 1)],
        retry={"attempts": 2, "perTryTimeout": "1s"},
    )
    victim = lab.fakes["local-b"]
    baseline = send_sync(lab.url, chat(model), 200, concurrency=4)
    assert baseline.failed == 0
    assert 0.3 < baseline.shares()[victim.port] < 0.7

    victim.fault(**fault)
    try:
        during = send_sync(lab.url, chat(model), 300, concurrency=4)
        assert during.failed == 0, (during.statuses, during.errors[:3])
        after = send_sync(lab.url, chat(model), 100, concurrency=4)
        assert after.failed == 0
        assert victim.port not in after.ports, "the failing backend still gets traffic"
    finally:
        victim.heal()

    def recovered() -> bool:
        outcome = send_sync(lab.url, chat(model), 100, concurrency=4)
        return outcome.failed == 0 and outcome.shares().get(victim.port, 0) > 0.3

    eventually(recovered, timeout=40, interval=1)


def test_a_rotated_key_is_used_without_restarting_envoy(lab: Lab) -> None:
    model = "rotated"
    lab.serve(model, [lab.backend("local-a")])
    fake = lab.fakes["local-a"]
    new_key = f"sk-test-rotated-{time.monotonic_ns()}"
    pid = lab.envoy.process.pid
    fake.rotate_key(new_key)  # the provider now refuses the old key
    lab.cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "keys", "namespace": lab.namespace},
            "stringData": {"local-a": new_key},
        }
    )
    eventually(lambda: send_sync(lab.url, chat(model), 5, 1).statuses[200] == 5, timeout=15)
    assert lab.envoy.process.pid == pid
    assert lab.envoy.process.poll() is None
    [*_, last] = fake.traffic()
    assert last["headers"]["authorization"] == f"Bearer {new_key}"


def test_a_providers_refusal_of_the_gateways_key_reaches_clients_as_a_gateway_error(
    lab: Lab,
) -> None:
    """A provider's 401 is about the gateway's key, not the client: the client gets a 502
    in its API's format, never the provider's body (it may quote the key)."""
    model = "refused"
    lab.serve(model, [lab.backend("local-c")])
    fake = lab.fakes["local-c"]
    key = fake.api_key
    fake.rotate_key(f"{key}-elsewhere")  # the provider no longer takes the gateway's key
    fake.forget_requests()
    client = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    try:
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        fake.rotate_key(key)
    assert refused.value.status_code == 502
    body = refused.value.response.json()
    assert body["error"]["code"] == "provider_refused_credentials"
    assert "Incorrect API key" not in refused.value.response.text
    assert "x-sy-provider-refused" not in refused.value.response.headers
    assert fake.traffic(), "the provider was not asked"
    eventually(lambda: send_sync(lab.url, chat(model), 5, 1).statuses[200] == 5, timeout=30)


def test_malformed_requests_get_openai_errors(lab: Lab) -> None:
    lab.serve("well-formed", [lab.backend("local-a")])

    async def post(data: bytes) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                lab.url, data=data, headers={"content-type": "application/json", **CLIENT_HEADERS}
            ) as r,
        ):
            return r.status, await r.json(content_type=None)

    status, body = asyncio.run(post(b"not json"))
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    status, body = asyncio.run(post(json.dumps({"messages": []}).encode()))
    assert status == 400
    status, body = asyncio.run(post(json.dumps(chat("no-such-model")).encode()))
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert "no-such-model" in body["error"]["message"]
    status, body = asyncio.run(post(b'{"model": "well-formed", "x": "' + b"a" * 17 * 2**20 + b'"}'))
    assert status == 413
    assert body["error"]["type"] == "invalid_request_error"

    async def models() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{lab.envoy.url}/v1/models", headers=CLIENT_HEADERS) as reply,
        ):
            result: dict[str, Any] = await reply.json()
            return result

    assert "well-formed" in [m["id"] for m in asyncio.run(models())["data"]]


def test_ten_megabyte_bodies_pass_and_are_retried_whole(lab: Lab) -> None:
    model = "large"
    lab.serve(model, [lab.backend("local-a"), lab.backend("local-b")])
    lab.fakes["local-a"].fault(status=500)
    try:
        big = chat(model, padding="x" * 10 * 2**20)
        outcome = send_sync(lab.url, big, 6, concurrency=2)
    finally:
        lab.fakes["local-a"].heal()
    assert outcome.failed == 0, outcome.statuses
    assert set(outcome.ports) == {lab.port("local-b")}


def test_the_gateway_reports_programmed(lab: Lab) -> None:
    programmed = eventually(
        lambda: (c := condition(lab.gateway(), "Programmed")) and c["status"] == "True" and c
    )
    assert programmed["message"] == "every connected Envoy runs the current config"


def test_a_rejected_config_is_reported_and_traffic_goes_on(lab: Lab, tmp_path: Path) -> None:
    """A second Envoy of the gateway whose port is taken NACKs its listener."""
    lab.serve("steady", [lab.backend("local-a")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = LocalEnvoy(
            f"{lab.namespace}/gw", port, lab.operator.xds_address, tmp_path / "second.log"
        )
        try:
            rejected = eventually(
                lambda: (
                    (c := condition(lab.gateway(), "Programmed"))
                    and c["reason"] == "Rejected"
                    and c
                )
            )
            assert rejected["status"] == "False"
            assert "Address already in use" in rejected["message"]
            assert send_sync(lab.url, chat("steady"), 50, 4).statuses[200] == 50
        finally:
            second.stop()
    eventually(lambda: condition(lab.gateway(), "Programmed")["status"] == "True")  # type: ignore[index]


def test_https_backends_are_verified_with_the_gateways_ca(lab: Lab) -> None:
    quick = {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2}
    lab.serve("private-tls", [lab.backend("secure")], healthCheck=quick)
    # The probes trust the gateway's CA bundle too: after several, still healthy.
    time.sleep(3)
    assert backend_status(lab, "private-tls", "secure")["healthy"] is True
    outcome = send_sync(lab.url, chat("private-tls"), 20, 2)
    assert outcome.statuses[200] == 20
    assert set(outcome.ports) == {lab.port("secure")}
    [*_, last] = lab.fakes["secure"].traffic()
    assert last["headers"]["authorization"] == f"Bearer {lab.fakes['secure'].api_key}"

    # The same server under a name the CA bundle does not cover is checked against the
    # system trust store, which does not know the test's CA: the handshake fails.
    untrusted = {**lab.backend("secure"), "url": f"https://127.0.0.1:{lab.port('secure')}"}
    lab.cluster.apply(lab.endpoint_manifest("untrusted-tls", [untrusted]))
    eventually(
        lambda: condition(
            lab.cluster.get("modelendpoints", "untrusted-tls", lab.namespace), "Ready"
        )
    )

    def attempted() -> Outcome | None:
        outcome = send_sync(lab.url, chat("untrusted-tls"), 3, 1)
        return outcome if 404 not in outcome.statuses else None  # routed, not unknown

    refused = eventually(attempted)
    assert refused.statuses[200] == 0, refused.statuses


def test_a_429_takes_the_backend_out_of_rotation_for_its_retry_after(lab: Lab) -> None:
    model = "rate-limited"
    lab.serve(model, [lab.backend("local-a"), lab.backend("local-b")])
    limited = lab.fakes["local-b"]
    limited.fault(status=429, retryAfter=6)
    try:
        first = send_sync(lab.url, chat(model), 20, concurrency=2)
        assert first.failed == 0, first.statuses

        def backing_off() -> bool:
            status = lab.cluster.get("modelendpoints", model, lab.namespace) or {}
            backends = {b["name"]: b for b in status.get("status", {}).get("backends", [])}
            return bool(backends.get("local-b", {}).get("reason") == "RateLimited")

        eventually(backing_off, timeout=3, interval=0.1)
        time.sleep(0.5)  # the push that took it out reaches Envoy
        limited.forget_requests()
        during = send_sync(lab.url, chat(model), 100, concurrency=2)
        assert during.failed == 0, during.statuses
        assert limited.traffic() == [], "a rate-limited backend was asked again too soon"
    finally:
        limited.heal()

    def back() -> bool:
        return send_sync(lab.url, chat(model), 50, 2).shares().get(limited.port, 0) > 0.2

    eventually(back, timeout=15, interval=0.5)


def test_clients_see_the_providers_429_when_every_backend_is_rate_limited(lab: Lab) -> None:
    model = "all-limited"
    lab.serve(model, [lab.backend("local-c")])
    lab.fakes["local-c"].fault(status=429, retryAfter=3)
    try:
        outcome = send_sync(lab.url, chat(model), 3, 1)
    finally:
        lab.fakes["local-c"].heal()
    assert outcome.statuses[429] >= 1, outcome.statuses


def test_the_next_tier_takes_over_when_a_tier_is_down(lab: Lab) -> None:
    model = "tiers"
    lab.serve(model, [lab.backend("local-a", 1, 0), lab.backend("local-c", 1, 1)])
    assert set(send_sync(lab.url, chat(model), 50, 2).ports) == {lab.port("local-a")}
    lab.fakes["local-a"].fault(refuse=True)
    try:
        during = send_sync(lab.url, chat(model), 200, concurrency=4)
    finally:
        lab.fakes["local-a"].heal()
    assert during.failed == 0, during.statuses
    assert during.shares()[lab.port("local-c")] > 0.95


def test_embeddings_and_completions_are_routed_too(lab: Lab) -> None:
    lab.serve("embed", [lab.backend("local-a")])
    embeddings = send_sync(
        f"{lab.envoy.url}/v1/embeddings", {"model": "embed", "input": ["a", "b"]}, 5, 1
    )
    assert embeddings.statuses[200] == 5
    completions = send_sync(
        f"{lab.envoy.url}/v1/completions", {"model": "embed", "prompt": "hi"}, 5, 1
    )
    assert completions.statuses[200] == 5
    paths = {r["path"] for r in lab.fakes["local-a"].traffic()}
    assert {"/v1/embeddings", "/v1/completions"} <= paths


def test_envoy_keeps_serving_while_the_operator_is_away(lab: Lab) -> None:
    lab.serve("steady-state", [lab.backend("local-a")])
    lab.operator.stop()
    try:
        outcome = send_sync(lab.url, chat("steady-state"), 100, 4)
    finally:
        lab.operator.start()
    assert outcome.statuses[200] == 100
    eventually(
        lambda: (c := condition(lab.gateway(), "Programmed")) and c["status"] == "True",
        timeout=30,
    )


FAST_PROBES = {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 2}


def backend_status(lab: Lab, model: str, backend: str) -> dict[str, Any]:
    endpoint = lab.cluster.get("modelendpoints", model, lab.namespace) or {}
    for entry in endpoint.get("status", {}).get("backends", []):
        if entry["name"] == backend:
            return dict(entry)
    return {}


def test_probes_take_a_down_backend_out_and_bring_it_back(lab: Lab) -> None:
    model = "probed"
    lab.serve(model, [lab.backend("local-a"), lab.backend("local-c")], healthCheck=FAST_PROBES)
    eventually(lambda: backend_status(lab, model, "local-c").get("lastProbeTime"))
    broken = lab.fakes["local-c"]
    broken.fault(status=503)
    started = time.monotonic()
    try:
        eventually(
            lambda: backend_status(lab, model, "local-c").get("healthy") is False,
            timeout=10,
            interval=0.1,
        )
        # Reported within interval x unhealthyThreshold, plus 2 s.
        assert time.monotonic() - started <= 1 * 2 + 2
        down = backend_status(lab, model, "local-c")
        assert down["effectiveWeight"] == 0
        assert down["reason"] == "Unhealthy"
        assert down["consecutiveFailures"] >= 2
        endpoint = lab.cluster.get("modelendpoints", model, lab.namespace)
        assert condition(endpoint, "Degraded")["status"] == "True"  # type: ignore[index]
        assert condition(endpoint, "Ready")["status"] == "True"  # type: ignore[index]
        time.sleep(0.5)  # the new weights reach Envoy
        broken.forget_requests()
        outcome = send_sync(lab.url, chat(model), 100, 2)
        assert outcome.failed == 0
        assert broken.traffic() == [], "the unhealthy backend still got traffic"
        events = [
            e["reason"]
            for e in lab.cluster.list("events", lab.namespace)
            if e["involvedObject"]["name"] == model
        ]
        assert "BackendsUnavailable" in events
    finally:
        broken.heal()
    healed = time.monotonic()
    eventually(
        lambda: backend_status(lab, model, "local-c").get("healthy") is True,
        timeout=10,
        interval=0.1,
    )
    assert time.monotonic() - healed <= 1 * 2 + 2
    eventually(
        lambda: send_sync(lab.url, chat(model), 50, 2).shares().get(broken.port, 0) > 0.2,
        timeout=10,
    )


def test_when_every_backend_is_down_traffic_fails_open(lab: Lab) -> None:
    model = "all-down"
    lab.serve(model, [lab.backend("local-b")], healthCheck=FAST_PROBES)
    lab.fakes["local-b"].fault(status=500)
    try:
        eventually(
            lambda: backend_status(lab, model, "local-b").get("healthy") is False,
            timeout=10,
            interval=0.1,
        )
        endpoint = lab.cluster.get("modelendpoints", model, lab.namespace)
        degraded = condition(endpoint, "Degraded")
        ready = condition(endpoint, "Ready")
        assert degraded is not None
        assert ready is not None
        assert (degraded["status"], degraded["reason"]) == ("True", "NoHealthyBackend")
        assert (ready["status"], ready["reason"]) == ("False", "NoHealthyBackend")
        # Still routed (fail open): the provider's own error reaches the client, not a 404.
        assert backend_status(lab, model, "local-b")["effectiveWeight"] == 1
        outcome = send_sync(lab.url, chat(model), 3, 1)
        assert 404 not in outcome.statuses
    finally:
        lab.fakes["local-b"].heal()
    eventually(lambda: backend_status(lab, model, "local-b").get("healthy") is True, timeout=10)


def test_the_operator_exports_clean_metrics_without_key_material(lab: Lab) -> None:
    model = "measured"
    lab.serve(
        model, [lab.backend("local-a", 3), lab.backend("local-b", 1)], healthCheck=FAST_PROBES
    )
    base = f"http://{lab.operator.metrics_address}"

    def scrape() -> str:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    series = f'backend="local-a",endpoint="{model}",gateway="{lab.namespace}/gw"'

    def probed() -> str | None:
        text = scrape()
        # The answers lab.serve sent are counted too, within a second: promtool checks them.
        counted = 'gen_ai_client_token_usage_sum{backend="local-a"' in text
        return text if f"switchyard_backend_up{{{series}" in text and counted else None

    text = eventually(probed)
    assert f'switchyard_backend_effective_weight{{{series},namespace="{lab.namespace}"' in text
    assert "switchyard_backend_probe_duration_seconds_bucket" in text
    assert "switchyard_xds_pushes_total" in text
    assert "switchyard_gateway_reconcile_duration_seconds_count" in text
    for fake in lab.fakes.values():
        assert fake.api_key not in text
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
        assert reply.status == 200
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_live_failures_make_the_operator_probe_at_once(lab: Lab) -> None:
    """Envoy reports failed attempts; the operator probes then instead of in 30 s."""
    model = "passive"
    slow_probes = {
        "interval": "30s",
        "timeout": "500ms",
        "unhealthyThreshold": 2,
        "healthyThreshold": 1,
    }
    lab.serve(model, [lab.backend("local-a"), lab.backend("local-b")], healthCheck=slow_probes)
    eventually(lambda: backend_status(lab, model, "local-b").get("lastProbeTime"))
    lab.fakes["local-b"].fault(status=502)
    started = time.monotonic()
    try:

        def reported() -> bool:
            assert send_sync(lab.url, chat(model), 10, 2).failed == 0
            return backend_status(lab, model, "local-b").get("healthy") is False

        eventually(reported, timeout=15, interval=0.2)
        assert time.monotonic() - started < 10, "the live failures did not hasten the probes"
    finally:
        lab.fakes["local-b"].heal()


def test_a_restart_keeps_refused_and_rate_limited_backends_out_and_writes_nothing(
    lab: Lab,
) -> None:
    """A restarted operator resumes a refused key and a back-off from status: it routes to
    neither again, and rewrites no status."""
    model = "restart-held-back"
    quick = {"interval": "1s", "timeout": "500ms"}
    lab.serve(
        model,
        [lab.backend("local-a"), lab.backend("local-b"), lab.backend("local-c")],
        healthCheck=quick,
    )
    limited, refusing = lab.fakes["local-b"], lab.fakes["local-c"]
    key = refusing.api_key
    limited.fault(status=429, retryAfter=120)
    refusing.rotate_key(f"{key}-rotated-away")  # the provider no longer takes the Secret's key
    try:
        eventually(
            lambda: (
                backend_status(lab, model, "local-b").get("reason") == "RateLimited"
                and backend_status(lab, model, "local-c").get("reason") == "CredentialsInvalid"
            ),
            timeout=15,
        )
        assert backend_status(lab, model, "local-b")["rateLimitedUntil"]
        time.sleep(1.5)  # the pass that wrote that status is done
        before = lab.cluster.get("modelendpoints", model, lab.namespace)
        assert before is not None
        lab.operator.stop()
        lab.operator.start()
        # The new operator probes again (1 s interval) and passes over the gateway.
        time.sleep(4)
        after = lab.cluster.get("modelendpoints", model, lab.namespace)
        assert after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], (
            json.dumps(before["status"]) + " -> " + json.dumps(after["status"])
        )
        limited.forget_requests()
        refusing.forget_requests()
        outcome = send_sync(lab.url, chat(model), 40, concurrency=2)
        assert outcome.failed == 0, outcome.statuses
        assert set(outcome.ports) == {lab.port("local-a")}
    finally:
        limited.heal()
        refusing.rotate_key(key)


def test_no_secret_anywhere_a_person_or_program_can_read(lab: Lab) -> None:
    """After every test of the lab: the operator's log and metrics, Envoy's config (xDS as
    it received it) and log, and what the API server shows of the namespace."""
    with urllib.request.urlopen(
        f"http://{lab.operator.metrics_address}/metrics", timeout=5
    ) as reply:
        metrics = reply.read().decode()
    places = {
        "operator log": lab.operator.log,
        "operator metrics": metrics,
        "Envoy's config dump": lab.envoy.config_dump(),
        "xDS as sent": lab.xds_as_sent(),
        "Envoy's log": lab.envoy.log.read_text(errors="replace"),
        **hygiene.cluster_places(lab.cluster, [lab.namespace]),
    }
    assert "switchyard/" in places["Envoy's config dump"], "the config dump holds no route"
    hygiene.assert_clean(places, [CLIENT_KEY, *(fake.api_key for fake in lab.fakes.values())])
