"""Probes against the fake providers over real HTTP: each outcome and its readable reason."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from switchyard.fakes.provider import FakeProvider, Fault, running
from switchyard.health.probes import Outcome, ProbeResult, Target, probe
from tests_support.tls import make_ca_and_server

KEY = "sk-test-probe-key"


def probe_with(
    provider: str, fault: Fault | None = None, key: str = KEY, timeout: float = 2.0, **target: Any
) -> ProbeResult:
    async def body() -> ProbeResult:
        fake = FakeProvider(provider, KEY, models=["m"])
        async with running(fake), aiohttp.ClientSession() as session:
            if fault is not None:
                await fake.set_fault(fault)
            spec = Target(provider, fake.url, "m", target.get("api_version"), timeout)
            return await probe(session, spec, key)

    return asyncio.run(body())


@pytest.mark.parametrize(
    ("provider", "api_version"),
    [
        ("OpenAI", None),
        ("AzureOpenAI", "2024-10-21"),
        ("AzureOpenAI", None),
        ("Anthropic", None),
        ("OpenAICompatible", None),
    ],
)
def test_a_healthy_provider_passes(provider: str, api_version: str | None) -> None:
    result = probe_with(provider, api_version=api_version)
    assert result.outcome == Outcome.HEALTHY, result.reason


def test_a_refused_key_is_credentials_invalid_not_down() -> None:
    result = probe_with("Anthropic", key="wrong")
    assert result.outcome == Outcome.CREDENTIALS_INVALID
    assert result.reason == "HTTP 401: the key was refused"


def test_a_429_carries_its_retry_after() -> None:
    result = probe_with("OpenAI", Fault(status=429, retry_after=17))
    assert (result.outcome, result.retry_after) == (Outcome.RATE_LIMITED, 17.0)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(status=503), "HTTP 503"),
        (Fault(refuse=True), "connection failed"),
        (Fault(hang=True), "no answer within 0.5s"),
    ],
)
def test_failures_have_readable_reasons(fault: Fault, reason: str) -> None:
    result = probe_with("OpenAI", fault, timeout=0.5)
    assert result.outcome == Outcome.FAILED
    assert reason in result.reason
    assert result.latency_ms < 2000


def test_an_html_error_page_is_a_failure() -> None:
    async def body() -> ProbeResult:
        async def page(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text="<html>Bad gateway</html>", content_type="text/html")

        app = aiohttp.web.Application()
        app.router.add_get("/v1/models", page)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                target = Target("OpenAI", f"http://127.0.0.1:{port}", "m", None, 2.0)
                return await probe(session, target, KEY)
        finally:
            await runner.cleanup()

    result = asyncio.run(body())
    assert result.outcome == Outcome.FAILED
    assert "not JSON" in result.reason


def test_thousands_of_backends_do_not_open_thousands_of_sockets() -> None:
    from switchyard.api.models import HealthCheck
    from switchyard.handlers.health_monitor import MAX_CONCURRENT_PROBES, HealthMonitor
    from switchyard.kube.secrets import SecretCache

    async def body() -> int:
        fake = FakeProvider("OpenAICompatible", KEY, models=["m"])
        async with running(fake):
            await fake.set_fault(Fault(hang=True))
            monitor = HealthMonitor(
                SecretCache(None, lambda key: frozenset()),  # type: ignore[arg-type]
                lambda gateway: None,
            )
            check = HealthCheck(interval="60s", timeout="5s")
            target = Target("OpenAICompatible", fake.url, "m", None, 5.0)
            monitor.watch(
                ("ns", "gw"),
                {("ns", f"ep-{i}", "b"): (target, None, check) for i in range(1000)},
                {},
            )
            task = asyncio.create_task(monitor.run())
            await asyncio.sleep(1.5)
            task.cancel()
            open_at_once = len(fake.requests)
            await fake.set_fault(Fault())
            return open_at_once

    open_at_once = asyncio.run(body())
    assert 0 < open_at_once <= MAX_CONCURRENT_PROBES


def test_probes_trust_what_the_gateways_backend_tls_trusts(tmp_path: Path) -> None:
    """A private-CA backend (an in-cluster vLLM, say) must not look down to the probes while
    the data plane, which trusts the gateway's caBundle, serves it fine."""
    ca, certificate, private_key = make_ca_and_server(tmp_path, "localhost")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(certificate, private_key)

    async def body(ca_bundle: str | None) -> ProbeResult:
        fake = FakeProvider("OpenAICompatible", KEY, models=["m"], ssl_context=serving)
        async with running(fake), aiohttp.ClientSession() as session:
            url = f"https://localhost:{fake.port}"
            return await probe(
                session, Target("OpenAICompatible", url, "m", None, 2.0, ca_bundle), KEY
            )

    assert asyncio.run(body(ca.read_text())).outcome == Outcome.HEALTHY
    untrusted = asyncio.run(body(None))
    assert untrusted.outcome == Outcome.FAILED
    assert "connection failed" in untrusted.reason
