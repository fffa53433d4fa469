"""Fuzzed ModelEndpoints and ModelGateways through the real API server and the real operator.

Every spec is refused at apply (schema, CEL) or admitted and then reported by the operator
with conditions at its generation, as the README's rules say; the operator keeps running,
logs no traceback and keeps serving a known-good canary on every gateway; and what it pushes
to each gateway's Envoys passes the real Envoy's validation.

FUZZ_EXAMPLES specs in all (default 300; `make fuzz` runs 10,000), applied FUZZ_BATCH
endpoints and 3 gateways at a time (default 16). FUZZ_SHRINK=1 lets Hypothesis shrink a
failing batch (slow: every step is a round on the cluster); without it the failure names
the objects at fault and their specs.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from fuzz.strategies import Batch, batches
from fuzz.world import FuzzWorld

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
BATCH = int(os.environ.get("FUZZ_BATCH", "16"))
GATEWAYS_PER_BATCH = 3
ROUNDS = math.ceil(EXAMPLES / (BATCH + GATEWAYS_PER_BATCH))
PHASES = (Phase.explicit, Phase.generate) + (
    (Phase.shrink,) if os.environ.get("FUZZ_SHRINK") == "1" else ()
)


@pytest.mark.timeout(300 + 10 * ROUNDS)
# The operator runs in a thread of this process: its own use of `random` (probe jitter) is
# what Hypothesis sees change while it draws.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(
    max_examples=ROUNDS,
    deadline=None,
    phases=PHASES,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    # No example database (it would write .hypothesis/ into the checkout): a round builds on
    # the cluster state the previous rounds left, so a saved example would not replay alone.
    database=None,
)
@given(batch=batches(endpoints=BATCH, gateways=GATEWAYS_PER_BATCH))
def test_every_spec_is_refused_at_apply_or_reported(fuzz_world: FuzzWorld, batch: Batch) -> None:
    fuzz_world.play(batch)


def test_no_key_material_outside_secrets(fuzz_world: FuzzWorld) -> None:
    assert fuzz_world.tally.rounds, "no round was played"
    assert not fuzz_world.leaked_key_material(), "key material outside Secrets"
