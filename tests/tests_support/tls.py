"""A private CA and a server certificate it signs, made fresh for a test."""

from __future__ import annotations

from pathlib import Path

from gatewaylab import lab_ca_and_server


def make_ca_and_server(directory: Path, hostname: str) -> tuple[Path, Path, Path]:
    """Returns (CA certificate, server certificate, server key) PEM files for `hostname`."""
    return lab_ca_and_server(directory, hostname)
