"""Free TCP ports for the processes the tests, the demo and the benchmarks start.

A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range it
draws every outgoing connection's local port from. Between the moment such a port is picked
and the moment the process it is meant for binds it, a busy test's client connection can take
it ("address already in use"), and a later `bind(0)` in the same process can be handed it
again. So ports are picked here from below the ephemeral range (and below Kubernetes'
NodePort range), in turn, and checked free by binding them.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator

# Below NodePorts (30000-32767) and the kernel's default ephemeral range (32768-60999).
FIRST, LAST = 15000, 29999


def _candidates() -> Iterator[int]:
    # A random start, so that two processes picking ports at once rarely meet.
    size = LAST - FIRST + 1
    start = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big")).randrange(size)
    for offset in itertools.count():
        yield FIRST + (start + offset) % size


_CANDIDATES = _candidates()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing has bound, and that none of this process's last 15,000 picks was."""
    for port in itertools.islice(_CANDIDATES, LAST - FIRST + 1):
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port between {FIRST} and {LAST}")
