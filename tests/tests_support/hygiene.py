"""The secret-hygiene scanner: everywhere a person or a program can read, no secret.

It looks for the values a test made (provider keys, as written and base64-encoded), and for
what is a secret whatever its value: a PEM private key, a JSON Web Token (a ServiceAccount
token), an `Authorization` header with its credential. Every suite's proof goes through
`assert_clean`, over the places `cluster_places` and its callers gather: logs, Events,
statuses, ConfigMaps, Leases, metrics, Envoy's config dump and access log.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping

from tests_support.cluster import Cluster

# What is secret by its shape alone.
SHAPES = {
    "a PEM private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a JSON Web Token": re.compile(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    "a Google access token": re.compile(r"ya29\.[\w-]{10,}"),
    # An AWS shared-credentials file's secret, as the operator writes temporary ones.
    "an AWS secret access key": re.compile(
        r"aws_(secret_access_key|session_token)\s*=\s*[A-Za-z0-9/+=]{30,}"
    ),
    "an Authorization header's credential": re.compile(
        r"""["']?authorization["']?\s*[:=]\s*["']?(Bearer|Basic)\s+[\w.~+/-]{8,}""",
        re.IGNORECASE,
    ),
}
# Kinds whose objects anyone with read access to a namespace can see (Secrets excepted).
READABLE_KINDS = ("configmaps", "events", "modelendpoints", "modelgateways", "leases")


def leaks(places: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """Each secret found, as "<what> in <place>"."""
    values = [v for v in known if v]
    found = []
    for place, text in places.items():
        for value in values:
            if value in text:
                found.append(f"a key made by the test in {place}")
            elif base64.b64encode(value.encode()).decode() in text:
                found.append(f"a key made by the test, base64-encoded, in {place}")
        found += [f"{what} in {place}" for what, shape in SHAPES.items() if shape.search(text)]
    return found


def cluster_places(cluster: Cluster, namespaces: Iterable[str]) -> dict[str, str]:
    """What the API server shows of `namespaces` besides their Secrets."""
    return {
        f"{kind} in {namespace}": json.dumps(cluster.list(kind, namespace))
        for namespace in namespaces
        for kind in READABLE_KINDS
    }


def assert_clean(places: Mapping[str, str], known: Iterable[str]) -> None:
    known = list(known)
    assert known, "no key material to look for"
    assert places, "nowhere to look"
    found = leaks(places, known)
    assert not found, "secrets outside Secrets: " + "; ".join(found[:10])
