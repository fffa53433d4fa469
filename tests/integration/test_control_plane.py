"""The cluster the suite runs on has what the operator relies on."""

from __future__ import annotations

import json
import re

import pytest

from tests_support.cluster import Cluster, eventually

pytestmark = pytest.mark.integration


def test_the_server_reports_a_real_release(cluster: Cluster) -> None:
    """An unstamped build calls itself v0.0.0-master, which kubectl and Helm refuse."""
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert version["major"] == "1"
    assert re.fullmatch(r"v1\.[0-9]+\.[0-9]+.*", version["gitVersion"])


def test_service_account_tokens_can_be_minted(cluster: Cluster) -> None:
    # The service-account controller creates `default` shortly after the cluster starts.
    eventually(lambda: cluster.get("serviceaccounts", "default", "default"))
    token = cluster.kubectl("create", "token", "default", "-n", "default", "--duration=10m")
    assert len(token.strip().split(".")) == 3, "not a JWT"
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token.strip()},
    }
    reply = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)))
    assert reply["status"]["authenticated"] is True
    assert reply["status"]["user"]["username"] == "system:serviceaccount:default:default"
