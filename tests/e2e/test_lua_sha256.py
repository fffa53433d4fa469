"""sha256.lua run in the real Envoy, checked against hashlib: a Lua filter whose chunk is
sha256.lua and an `envoy_on_request` that answers the request body's digest.

No operator and no upstream: the filter answers every request itself.
"""

from __future__ import annotations

import hashlib
import random
import string
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gatewaylab import EnvoyProcess, wait_for_port
from ports import free_port
from switchyard.render.envoy import TYPE

pytestmark = pytest.mark.e2e

SHA256_LUA = resources.files("switchyard.render") / "lua" / "sha256.lua"

# In front of sha256.lua, as the program it is appended to would be: notes the globals
# there are before it, so that /globals can say which ones it added.
BEFORE = """
local config = {}
local globals_before = {}
for name in pairs(_G) do globals_before[name] = true end
"""

# /hash answers sha256_hex of the body; /bench hashes the body x-count times and says the
# CPU seconds that took (os.clock) in x-cpu-seconds; /globals lists the globals added.
ON_REQUEST = """
function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  local body = handle:body()
  local message = body and body:getBytes(0, body:length()) or ""
  if path == "/hash" then
    handle:respond({[":status"] = "200"}, sha256_hex(message))
  elseif path == "/bench" then
    local count = tonumber(handle:headers():get("x-count"))
    local digest
    local started = os.clock()
    for _ = 1, count do digest = sha256_hex(message) end
    local seconds = string.format("%.6f", os.clock() - started)
    handle:respond({[":status"] = "200", ["x-cpu-seconds"] = seconds}, digest)
  elseif path == "/globals" then
    local added = {}
    for name in pairs(_G) do
      if not globals_before[name] then added[#added + 1] = name end
    end
    table.sort(added)
    handle:respond({[":status"] = "200"}, table.concat(added, " "))
  end
end
"""

BENCH_HASHES = 10_000
API_KEY = "sk-proj-" + "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=48))


def static_config(port: int, lua: str) -> dict[str, Any]:
    """One listener whose only filters are the Lua one and the router; a request the Lua
    does not answer gets a 500 from the route."""
    manager = {
        "@type": TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "sha256",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 500,
                                "body": {"inline_string": "the Lua filter did not answer"},
                            },
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": lua},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    listener = {
        "name": "sha256",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {"static_resources": {"listeners": [listener]}}


class Envoy(EnvoyProcess):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        lua = BEFORE + SHA256_LUA.read_text(encoding="utf-8") + ON_REQUEST
        super().__init__(static_config(self.port, lua), workdir, "envoy", workdir)
        wait_for_port(self.port, self.process, timeout=30)

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[str, str]:
        """The reply's body and its x-cpu-seconds header (empty when absent)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, method="POST", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.read().decode(), reply.headers.get("x-cpu-seconds", "")
        except urllib.error.HTTPError as error:
            log = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"{error.code} {error.read()!r}\n{log}") from error


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    envoy = Envoy(tmp_path_factory.mktemp("lua-sha256"))
    try:
        yield envoy
    finally:
        envoy.stop()


def counting(length: int) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(length))


def every_byte() -> bytes:
    """1000 bytes with every byte value among them, in a shuffled order."""
    chosen = list(range(256)) + random.Random(1).choices(range(256), k=1000 - 256)
    random.Random(2).shuffle(chosen)
    return bytes(chosen)


# Lengths around the padding's edges: 55 bytes still fit one block, 56 need two; and the
# same around the second block.
@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 128])
def test_digest_matches_hashlib_at_padding_edges(envoy: Envoy, length: int) -> None:
    message = counting(length)
    assert envoy.post("/hash", message)[0] == hashlib.sha256(message).hexdigest()


def test_digest_of_every_byte_value(envoy: Envoy) -> None:
    message = every_byte()
    assert envoy.post("/hash", message)[0] == hashlib.sha256(message).hexdigest()


def test_digest_of_an_api_key(envoy: Envoy) -> None:
    message = API_KEY.encode()
    assert envoy.post("/hash", message)[0] == hashlib.sha256(message).hexdigest()


def test_only_sha256_hex_is_added_to_the_globals(envoy: Envoy) -> None:
    """Besides envoy_on_request, and EnvoyTimestampResolution which Envoy sets itself after
    the chunk has run."""
    added = set(envoy.post("/globals", b"")[0].split())
    assert added - {"envoy_on_request", "EnvoyTimestampResolution"} == {"sha256_hex"}


def test_cost_of_hashing_a_key(envoy: Envoy) -> None:
    """Prints what a hash of a 56-byte key (two blocks with the padding) costs in Envoy."""
    key = API_KEY.encode()
    assert len(key) == 56
    started = time.perf_counter()
    digest, cpu_seconds = envoy.post("/bench", key, {"x-count": str(BENCH_HASHES)})
    wall = time.perf_counter() - started
    assert digest == hashlib.sha256(key).hexdigest()
    print(
        f"\nsha256_hex of a {len(key)}-byte key in Envoy, {BENCH_HASHES} times: "
        f"{float(cpu_seconds) / BENCH_HASHES * 1e6:.2f} µs each in Lua (os.clock), "
        f"{wall / BENCH_HASHES * 1e6:.2f} µs each by the whole request's wall time"
    )
