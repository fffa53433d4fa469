"""The referenced Secret keys, kept current from watch events instead of re-read per pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

ObjectKey = tuple[str, str]
SecretData = dict[str, str] | None


class SecretReader(Protocol):
    """What the cache needs of the API client (`switchyard.kube.client.Kube` has it)."""

    async def read_secret_data(self, namespace: str, name: str) -> SecretData: ...


@dataclass(frozen=True)
class _Held:
    """What is kept of one Secret: its referenced keys' values (None: no such Secret), and
    the keys that were referenced when they were taken."""

    data: SecretData
    keys: frozenset[str]


def _narrowed(data: Mapping[str, str] | None, keys: frozenset[str]) -> SecretData:
    return None if data is None else {k: v for k, v in data.items() if k in keys}


class SecretCache:
    """Holds, in memory only, the keys of Secrets that something references (a ModelEndpoint's
    credentialsRef, a ModelClient's apiKeyRef): never whole Secrets, whose other keys may hold
    anything.

    A Secret seen for the first time, or asked for a key it was not read for, is read from
    the API; after that, watch events keep the copy current. Absent Secrets are cached as
    absent, so the watch event of their creation is what brings them in.

    A watch event that lands while that read is in flight wins over the read: the watch
    delivers every change in order, so an event older than the read is followed by the
    read's own change, whereas a change made after the read would bring no later event and
    be missed until the Secret changed again.
    """

    def __init__(
        self, kube: SecretReader, referenced: Callable[[ObjectKey], frozenset[str]]
    ) -> None:
        self._kube = kube
        # Which keys of a Secret something references now.
        self._referenced = referenced
        self._held: dict[ObjectKey, _Held] = {}
        # One read per Secret at a time; callers that ask meanwhile wait for the same one.
        self._reads: dict[ObjectKey, asyncio.Task[SecretData]] = {}
        # The latest watch event's data for a Secret whose read is in flight.
        self._observed_during_read: dict[ObjectKey, SecretData] = {}

    async def get(self, key: ObjectKey) -> SecretData:
        """The Secret's referenced keys and their (base64) values; None if it is absent."""
        held = self._held.get(key)
        if held is not None and self._referenced(key) <= held.keys:
            return held.data
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = asyncio.ensure_future(self._read(key))
            # A failure nobody waits for any more needs no "never retrieved" warning.
            read.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(read)

    async def _read(self, key: ObjectKey) -> SecretData:
        try:
            data = await self._kube.read_secret_data(*key)
            if key in self._observed_during_read:
                data = self._observed_during_read[key]
            keys = self._referenced(key)
            self._held[key] = _Held(_narrowed(data, keys), keys)
            return self._held[key].data
        finally:
            # A failed read caches nothing: the next get() reads afresh, events included.
            del self._reads[key]
            self._observed_during_read.pop(key, None)

    def observe(self, key: ObjectKey, data: Mapping[str, str] | None) -> bool:
        """Record a watch event's view of a cached Secret; True when what we hold changed."""
        if key in self._reads:
            # No one holds this Secret's data yet: the read's waiters get this instead.
            self._observed_during_read[key] = _narrowed(data, self._referenced(key))
            return False
        held = self._held.get(key)
        if held is None:
            return False
        keys = held.keys | self._referenced(key)
        narrowed = _narrowed(data, keys)
        self._held[key] = _Held(narrowed, keys)
        return narrowed != held.data

    def forget_unreferenced(self, referenced: set[ObjectKey]) -> None:
        for key in set(self._held) - referenced:
            del self._held[key]
