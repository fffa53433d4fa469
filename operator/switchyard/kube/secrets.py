"""The referenced Secrets' data, kept current from watch events instead of re-read per pass."""

from __future__ import annotations

from switchyard.kube.client import Kube

ObjectKey = tuple[str, str]


class SecretCache:
    """Holds `data` only of Secrets that some ModelEndpoint references, in memory only.

    A Secret seen for the first time is read from the API; after that, watch events keep
    the copy current. Absent Secrets are cached as absent, so the watch event of their
    creation is what brings them in.
    """

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._data: dict[ObjectKey, dict[str, str] | None] = {}

    async def get(self, key: ObjectKey) -> dict[str, str] | None:
        if key not in self._data:
            self._data[key] = await self._kube.read_secret_data(*key)
        return self._data[key]

    def observe(self, key: ObjectKey, data: dict[str, str] | None) -> bool:
        """Record a watch event's view of a cached Secret; True when what we hold changed."""
        if key not in self._data:
            return False
        changed = self._data[key] != data
        self._data[key] = data
        return changed

    def forget_unreferenced(self, referenced: set[ObjectKey]) -> None:
        for key in set(self._data) - referenced:
            del self._data[key]
