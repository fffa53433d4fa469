"""Reads the rate limit service's counts from its Redis, for ModelClients' status: the one
place every Envoy's requests add up. A few keys every 15 s or so, so a connection per read
and the two replies Redis' protocol needs (an array of bulk strings) are all there is."""

from __future__ import annotations

import asyncio

TIMEOUT_SECONDS = 2.0


class CountsUnavailable(Exception):
    """Redis could not be asked, or answered what MGET never does."""


class RedisCounts:
    def __init__(self, host: str, port: int, password: str = "") -> None:
        self.host, self.port = host, port
        self._password = password

    async def read(self, keys: list[str]) -> list[int | None]:
        """Each key's count; None for a key that does not exist (nothing counted yet)."""
        if not keys:
            return []
        try:
            return await asyncio.wait_for(self._mget(keys), TIMEOUT_SECONDS)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
            raise CountsUnavailable(f"Redis at {self.host}:{self.port}: {error!r}") from error

    async def _mget(self, keys: list[str]) -> list[int | None]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            if self._password:
                writer.write(_command(b"AUTH", self._password.encode()))
                answer = await reader.readline()
                if not answer.startswith(b"+OK"):
                    # Redis' own words (WRONGPASS ...), never the password.
                    raise ValueError(f"AUTH refused: {answer[:80].decode(errors='replace')}")
            writer.write(_command(b"MGET", *(key.encode() for key in keys)))
            await writer.drain()
            header = await reader.readline()
            if not header.startswith(b"*") or int(header[1:]) != len(keys):
                raise ValueError(f"unexpected reply {header[:80]!r}")
            counts: list[int | None] = []
            for _ in keys:
                size = int((await reader.readline())[1:])
                if size < 0:
                    counts.append(None)
                    continue
                counts.append(int((await reader.readexactly(size + 2))[:-2]))
            return counts
        finally:
            writer.close()


def _command(*parts: bytes) -> bytes:
    """A command in Redis' protocol: an array of bulk strings."""
    encoded = b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    return b"*%d\r\n" % len(parts) + encoded
