"""A failed pass is logged with what failed and where, and never with the exception's
message, which may carry a value read from a Secret."""

from __future__ import annotations

import pytest

from switchyard.kube.client import describe_error
from switchyard.providers import provider


def test_an_error_of_the_operators_code_names_its_type_and_place_not_its_message() -> None:
    with pytest.raises(ValueError, match="sk-secret") as raised:
        provider("sk-secret")
    described = describe_error(raised.value)
    assert described.startswith("ValueError in providers/__init__.py:")
    assert "sk-secret" not in described


def test_an_error_outside_the_operators_code_names_its_type() -> None:
    empty: dict[str, str] = {}
    with pytest.raises(KeyError) as raised:
        empty["sk-secret"]
    assert describe_error(raised.value) == "KeyError"
