"""The ports handed to test processes can't be taken by the kernel for someone else."""

from __future__ import annotations

import socket
from pathlib import Path

import ports


def ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_ports_come_from_outside_the_range_the_kernel_hands_out() -> None:
    # A port from that range can be given to an outgoing connection, or to a `bind(0)`,
    # between the moment it is picked and the moment its process binds it.
    picked = [ports.free_port() for _ in range(200)]
    assert not set(picked) & set(ephemeral_range())
    assert len(set(picked)) == len(picked), "a port was handed out twice"


def test_a_bound_port_is_passed_over() -> None:
    taken = socket.socket()
    try:
        port = ports.free_port()
        taken.bind(("127.0.0.1", port))
        taken.listen()
        # Walk the whole range once more: the taken port must not come back.
        picked = {ports.free_port() for _ in range(ports.LAST - ports.FIRST)}
        assert port not in picked
    finally:
        taken.close()
