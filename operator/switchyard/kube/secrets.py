"""The referenced Secrets' data, kept current from watch events instead of re-read per pass."""

from __future__ import annotations

import asyncio
from typing import Protocol

ObjectKey = tuple[str, str]
SecretData = dict[str, str] | None


class SecretReader(Protocol):
    """What the cache needs of the API client (`switchyard.kube.client.Kube` has it)."""

    async def read_secret_data(self, namespace: str, name: str) -> SecretData: ...


class SecretCache:
    """Holds `data` only of Secrets that some ModelEndpoint references, in memory only.

    A Secret seen for the first time is read from the API; after that, watch events keep
    the copy current. Absent Secrets are cached as absent, so the watch event of their
    creation is what brings them in.

    A watch event that lands while that first read is in flight wins over the read: the
    watch delivers every change in order, so an event older than the read is followed by
    the read's own change, whereas a change made after the read would bring no later event
    and be missed until the Secret changed again.
    """

    def __init__(self, kube: SecretReader) -> None:
        self._kube = kube
        self._data: dict[ObjectKey, SecretData] = {}
        # One read per Secret at a time; callers that ask meanwhile wait for the same one.
        self._reads: dict[ObjectKey, asyncio.Task[SecretData]] = {}
        # The latest watch event's data for a Secret whose first read is in flight.
        self._observed_during_read: dict[ObjectKey, SecretData] = {}

    async def get(self, key: ObjectKey) -> SecretData:
        if key in self._data:
            return self._data[key]
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = asyncio.ensure_future(self._first_read(key))
            # A failure nobody waits for any more needs no "never retrieved" warning.
            read.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(read)

    async def _first_read(self, key: ObjectKey) -> SecretData:
        try:
            data = await self._kube.read_secret_data(*key)
            if key in self._observed_during_read:
                data = self._observed_during_read[key]
            self._data[key] = data
            return data
        finally:
            # A failed read caches nothing: the next get() reads afresh, events included.
            del self._reads[key]
            self._observed_during_read.pop(key, None)

    def observe(self, key: ObjectKey, data: SecretData) -> bool:
        """Record a watch event's view of a cached Secret; True when what we hold changed."""
        if key in self._reads:
            # No one holds this Secret's data yet: the read's waiters get this instead.
            self._observed_during_read[key] = data
            return False
        if key not in self._data:
            return False
        changed = self._data[key] != data
        self._data[key] = data
        return changed

    def forget_unreferenced(self, referenced: set[ObjectKey]) -> None:
        for key in set(self._data) - referenced:
            del self._data[key]
