"""The control channel's CA life cycle: staged before it signs, the old one trusted until
it expires, nothing due left as it is, and certificates that name their gateway."""

from __future__ import annotations

import pytest
from cryptography import x509

from switchyard import pki

DAY = 24 * 3600.0
LIFETIMES = pki.Lifetimes(certificate=DAY, authority=40 * DAY)
START = 1_800_000_000.0


def test_a_new_ca_signs_and_is_trusted() -> None:
    first = pki.advance(None, START, LIFETIMES)
    assert first.staged is None
    assert first.trusted == (first.signing.certificate,)
    # Nothing is due a moment later: the same object, so nothing is written.
    assert pki.advance(first, START + 60, LIFETIMES) is first
    # What the Secret holds reads back the same.
    again = pki.Authorities.from_secret_data(first.to_secret_data())
    assert again == first


def test_the_successor_is_staged_then_signs_and_the_old_ca_stays_trusted() -> None:
    first = pki.advance(None, START, LIFETIMES)
    halfway = START + LIFETIMES.authority / 2 - LIFETIMES.staging
    staged = pki.advance(first, halfway + 60, LIFETIMES)
    assert staged.signing == first.signing
    assert staged.staged is not None
    assert staged.trusted == (first.signing.certificate, staged.staged.certificate)
    # Once every Envoy had the staging time to trust it, it signs; the old CA stays trusted.
    signing = pki.advance(staged, halfway + 60 + LIFETIMES.staging + 60, LIFETIMES)
    assert signing.signing == staged.staged
    assert signing.staged is None
    assert first.signing.certificate in signing.trusted
    # The old CA leaves the bundle when it expires, and not before.
    after = pki.advance(signing, START + LIFETIMES.authority + 120, LIFETIMES)
    assert first.signing.certificate not in after.trusted
    assert signing.signing.certificate in after.trusted


def test_rotation_asked_for_stages_at_once_and_a_dying_ca_is_replaced_at_once() -> None:
    first = pki.advance(None, START, LIFETIMES)
    asked = pki.advance(first, START + 60, LIFETIMES, rotate=True)
    assert asked.staged is not None
    assert asked.signing == first.signing
    # An operator away for months finds a CA about to expire: a new one signs now.
    late = START + LIFETIMES.authority - LIFETIMES.certificate / 2
    replaced = pki.advance(first, late, LIFETIMES)
    assert replaced.signing != first.signing
    assert replaced.staged is None


def test_a_gateways_certificate_names_it_and_its_ca_signed_it() -> None:
    authorities = pki.advance(None, START, LIFETIMES)
    issued = pki.issue_gateway(authorities.signing, "team-a", "shared", START, DAY)
    certificate = issued.parsed
    uris = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert [pki.gateway_of_id(uri) for uri in uris] == [("team-a", "shared")]
    assert authorities.trusts(certificate)
    other = pki.advance(None, START, LIFETIMES)
    assert not other.trusts(certificate)
    assert pki.renewal_due(issued.certificate, START) <= START + DAY / 2
    assert pki.gateway_of_id("spiffe://switchyard.dev/operator") is None


def test_lifetimes_keep_the_ca_well_beyond_its_certificates() -> None:
    with pytest.raises(ValueError, match="at least 4 times"):
        pki.Lifetimes(certificate=DAY, authority=2 * DAY)
