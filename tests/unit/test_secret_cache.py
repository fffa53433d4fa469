"""The Secret cache against a stand-in for the API client whose reads return when told."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from switchyard.kube.secrets import ObjectKey, SecretCache

SecretData = dict[str, str] | None

KEY: ObjectKey = ("team", "keys")
OLD = {"openai": "b2xk"}
NEW = {"openai": "bmV3"}


class HeldReads:
    """`read_secret_data` as the API client has it; each read waits until the test answers."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[SecretData]] = []
        self.reads = 0

    async def read_secret_data(self, namespace: str, name: str) -> SecretData:
        self.reads += 1
        answer: asyncio.Future[SecretData] = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        return await answer

    def answer(self, data: SecretData) -> None:
        self.pending.pop(0).set_result(data)

    def fail(self, error: Exception) -> None:
        self.pending.pop(0).set_exception(error)


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(
    scenario: Callable[[SecretCache, HeldReads], Awaitable[None]],
    referenced: set[str] | None = None,
) -> None:
    """`referenced`: the keys of KEY that something references (by default "openai")."""
    wanted = {"openai"} if referenced is None else referenced

    async def main() -> None:
        kube = HeldReads()
        cache = SecretCache(kube, lambda key: frozenset(wanted))
        await asyncio.wait_for(scenario(cache, kube), timeout=5)

    asyncio.run(main())


def test_only_the_referenced_keys_are_kept_and_a_newly_referenced_key_is_read() -> None:
    referenced = {"openai"}
    whole = {"openai": "b2xk", "unrelated": "c2VjcmV0", "anthropic": "YW50"}

    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        kube.answer(whole)
        assert await first == {"openai": "b2xk"}
        assert "c2VjcmV0" not in repr(vars(cache))
        # A change to a key nobody references changes nothing we hold.
        assert cache.observe(KEY, {**whole, "unrelated": "bmV3"}) is False
        # An endpoint now references another key of the Secret: read again, for both.
        referenced.add("anthropic")
        second = asyncio.ensure_future(cache.get(KEY))
        await settle()
        assert kube.reads == 2
        kube.answer(whole)
        assert await second == {"openai": "b2xk", "anthropic": "YW50"}
        assert cache.observe(KEY, {**whole, "anthropic": "bmV3"}) is True

    run(scenario, referenced)


def test_a_rotation_seen_during_the_first_read_wins_over_the_older_read() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        assert kube.reads == 1
        # The key is rotated after the API server answered the read, before we see it.
        assert cache.observe(KEY, NEW) is False  # nobody held the old data
        kube.answer(OLD)
        assert await first == NEW
        assert await cache.get(KEY) == NEW
        assert kube.reads == 1

    run(scenario)


def test_a_deletion_seen_during_the_first_read_wins_too() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        cache.observe(KEY, None)
        kube.answer(OLD)
        assert await first is None
        assert await cache.get(KEY) is None

    run(scenario)


def test_the_latest_of_several_events_during_the_read_wins() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        cache.observe(KEY, OLD)
        cache.observe(KEY, NEW)
        kube.answer(OLD)
        assert await first == NEW

    run(scenario)


def test_callers_asking_during_a_read_share_it() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        callers = [asyncio.ensure_future(cache.get(KEY)) for _ in range(3)]
        await settle()
        assert kube.reads == 1
        kube.answer(OLD)
        assert await asyncio.gather(*callers) == [OLD, OLD, OLD]

    run(scenario)


def test_a_caller_that_gives_up_leaves_the_read_to_the_others() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        impatient = asyncio.ensure_future(cache.get(KEY))
        patient = asyncio.ensure_future(cache.get(KEY))
        await settle()
        impatient.cancel()
        await settle()
        cache.observe(KEY, NEW)
        kube.answer(OLD)
        assert await patient == NEW
        assert impatient.cancelled()

    run(scenario)


def test_a_failed_read_caches_nothing_and_the_next_get_reads_again() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        cache.observe(KEY, NEW)
        kube.fail(RuntimeError("API server unavailable"))
        with pytest.raises(RuntimeError):
            await first
        # Not cached: an event now is not for a Secret we hold.
        assert cache.observe(KEY, NEW) is False
        second = asyncio.ensure_future(cache.get(KEY))
        await settle()
        assert kube.reads == 2
        kube.answer(NEW)
        assert await second == NEW

    run(scenario)


def test_after_the_first_read_events_keep_the_copy_current() -> None:
    async def scenario(cache: SecretCache, kube: HeldReads) -> None:
        # Events for Secrets nobody asked for are not kept.
        assert cache.observe(KEY, OLD) is False
        first = asyncio.ensure_future(cache.get(KEY))
        await settle()
        kube.answer(OLD)
        assert await first == OLD
        assert cache.observe(KEY, OLD) is False  # no change
        assert cache.observe(KEY, NEW) is True
        assert await cache.get(KEY) == NEW
        assert cache.observe(KEY, None) is True
        assert await cache.get(KEY) is None
        assert kube.reads == 1
        cache.forget_unreferenced(set())
        assert cache.observe(KEY, NEW) is False

    run(scenario)
