"""The operator's reader of the rate limit service's counts, against a real Redis (Debian's
redis-server)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewaylab import wait_for_port
from ports import free_port
from switchyard.counts import CountsUnavailable, RedisCounts

pytestmark = pytest.mark.e2e


PASSWORD = "counts-test-password"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_counts_are_read_by_key_and_a_key_never_counted_is_none(redis: int) -> None:
    client = ["redis-cli", "-p", str(redis), "--no-auth-warning", "-a", PASSWORD]
    subprocess.run([*client, "SET", "switchyard_client_team-a/app_limit_requests_60", "7"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([*client, "INCRBY", "switchyard_client_team-a/app_limit_tokens_60", "1234"],
                   check=True, capture_output=True)  # fmt: skip
    counts = RedisCounts("127.0.0.1", redis, PASSWORD)
    keys = [
        "switchyard_client_team-a/app_limit_requests_60",
        "switchyard_client_team-a/app_limit_tokens_60",
        "switchyard_client_team-b/other_limit_requests_60",
    ]
    assert asyncio.run(counts.read(keys)) == [7, 1234, None]
    assert asyncio.run(counts.read([])) == []


def test_a_wrong_password_is_a_clear_error_that_does_not_quote_it(redis: int) -> None:
    for password in ("", "not-the-password"):
        with pytest.raises(CountsUnavailable) as refused:
            asyncio.run(RedisCounts("127.0.0.1", redis, password).read(["k"]))
        assert "NOAUTH" in str(refused.value) or "WRONGPASS" in str(refused.value)
        assert not password or password not in str(refused.value)


def test_a_redis_that_does_not_answer_is_a_clear_error() -> None:
    counts = RedisCounts("127.0.0.1", free_port())
    with pytest.raises(CountsUnavailable, match=r"Redis at 127\.0\.0\.1:\d+"):
        asyncio.run(counts.read(["switchyard_client_a/b_limit_requests_60"]))
