"""The control channel's certificates: a CA of the operator's own, the certificate it serves
xDS with, and one client certificate per gateway that names the gateway. Pure: keys and
certificates in, keys and certificates out, the time passed in; no I/O.

Identities are SPIFFE-style URIs in the certificate's subjectAltName:

- a gateway's Envoys: `spiffe://switchyard.dev/ns/<namespace>/gateway/<name>`
- the operator's xDS server: `spiffe://switchyard.dev/operator`

Every key is ECDSA P-256. Leaf certificates live `Lifetimes.certificate` (24 h by default)
and are renewed at half-life; the CA lives `Lifetimes.authority` (a year by default). The CA
rotates in two steps (see `advance`): a new CA is first *staged*, trusted by both sides but
signing nothing, for `Lifetimes.staging` (long enough for every Envoy to be given the new
trust bundle); then it signs, and the old CA stays trusted until it expires, which is after
every certificate it signed (a leaf never outlives its CA).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "switchyard.dev"
OPERATOR_ID = f"spiffe://{TRUST_DOMAIN}/operator"
_GATEWAY_ID = re.compile(rf"spiffe://{re.escape(TRUST_DOMAIN)}/ns/([^/]+)/gateway/([^/]+)")

# Keys of the CA Secret (in the operator's namespace).
CA_CERT = "ca.crt"  # the CA that signs now
CA_KEY = "ca.key"
STAGED_CERT = "staged.crt"  # the next CA, trusted but not signing yet
STAGED_KEY = "staged.key"
TRUST_BUNDLE = "trust.crt"  # every CA certificate still trusted: previous, signing, staged
# Keys of a gateway's control-channel Secret (the Kubernetes TLS Secret layout, plus the CA).
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TLS_CA = "ca.crt"

DEFAULT_CERTIFICATE_SECONDS = 24 * 3600.0
DEFAULT_AUTHORITY_SECONDS = 365 * 24 * 3600.0
# A staged CA is trusted this long (at most) before it signs: time for the kubelet to bring
# every gateway Pod its new trust bundle (its periodic sync: 60 to 90 s).
MAX_STAGING_SECONDS = 3600.0


def gateway_id(namespace: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/gateway/{name}"


def gateway_of_id(uri: str) -> tuple[str, str] | None:
    found = _GATEWAY_ID.fullmatch(uri)
    return (found[1], found[2]) if found else None


@dataclass(frozen=True)
class Lifetimes:
    """How long certificates live, in seconds."""

    certificate: float = DEFAULT_CERTIFICATE_SECONDS
    authority: float = DEFAULT_AUTHORITY_SECONDS

    def __post_init__(self) -> None:
        if self.certificate <= 0 or self.authority < 4 * self.certificate:
            raise ValueError(
                "certificates must live a positive time, and the CA at least 4 times as long"
            )

    @property
    def staging(self) -> float:
        return min(self.authority / 4, MAX_STAGING_SECONDS)

    @property
    def check_interval(self) -> float:
        """How often the operator looks at what is due: often enough to renew on time."""
        return max(0.25, min(self.certificate / 16, self.staging / 8, 30.0))


@dataclass(frozen=True)
class Issued:
    """A certificate (PEM) and its private key (PEM, PKCS#8)."""

    certificate: bytes
    key: bytes = field(repr=False)

    @property
    def parsed(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _instant(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _backdate(lifetime: float) -> float:
    """notBefore lies this much in the past, for clocks a little behind ours."""
    return min(60.0, lifetime / 20)


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    flags = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )  # fmt: skip
    return x509.KeyUsage(**{flag: allowed.get(flag, False) for flag in flags})


def new_authority(now: float, lifetime: float) -> Issued:
    key = _new_key()
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Switchyard"),
            # A name of its own, so that an old CA and its successor never share a subject.
            x509.NameAttribute(NameOID.COMMON_NAME, f"switchyard CA {serial:x}"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(_instant(now - _backdate(lifetime)))
        .not_valid_after(_instant(now + lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _leaf(
    authority: Issued,
    now: float,
    lifetime: float,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> Issued:
    ca = authority.parsed
    ca_key = serialization.load_pem_private_key(authority.key, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _new_key()
    # Never beyond the CA: its successor takes over before then (see `advance`).
    not_after = min(now + lifetime, ca.not_valid_after_utc.timestamp())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Switchyard")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_instant(now - _backdate(lifetime)))
        .not_valid_after(_instant(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_gateway(
    authority: Issued, namespace: str, name: str, now: float, lifetime: float
) -> Issued:
    """A client certificate for the Envoys of one gateway, naming it (and nothing else)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(gateway_id(namespace, name))]
    return _leaf(authority, now, lifetime, names, ExtendedKeyUsageOID.CLIENT_AUTH)


def issue_server(authority: Issued, hosts: list[str], now: float, lifetime: float) -> Issued:
    """The xDS server's certificate: the operator's identity, and the host names and
    addresses Envoys or tools may dial it by."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(OPERATOR_ID)]
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _leaf(authority, now, lifetime, names, ExtendedKeyUsageOID.SERVER_AUTH)


def _certificates(bundle: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle) if bundle.strip() else []
    except ValueError:
        return []


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authorities:
    """What the CA Secret holds: the CA that signs, maybe its staged successor, and every
    CA certificate still trusted."""

    signing: Issued
    staged: Issued | None
    trusted: tuple[bytes, ...]  # PEM certificates, oldest first

    @property
    def bundle(self) -> bytes:
        return b"".join(self.trusted)

    def to_secret_data(self) -> dict[str, str]:
        raw = {CA_CERT: self.signing.certificate, CA_KEY: self.signing.key,
               TRUST_BUNDLE: self.bundle}  # fmt: skip
        if self.staged is not None:
            raw |= {STAGED_CERT: self.staged.certificate, STAGED_KEY: self.staged.key}
        return {key: base64.b64encode(value).decode() for key, value in raw.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Authorities | None:
        """None when the Secret does not hold a usable CA."""
        try:
            raw = {key: base64.b64decode(value) for key, value in data.items()}
            signing = _authority(raw.get(CA_CERT, b""), raw.get(CA_KEY, b""))
            staged = None
            if STAGED_CERT in raw:
                staged = _authority(raw[STAGED_CERT], raw.get(STAGED_KEY, b""))
        except (ValueError, TypeError, binascii.Error):
            return None
        if signing is None:
            return None
        trusted = [_pem(c) for c in _certificates(raw.get(TRUST_BUNDLE, b""))]
        for required in (signing, staged):
            if required is not None and required.certificate not in trusted:
                trusted.append(required.certificate)
        return cls(signing, staged, tuple(trusted))

    def trusts(self, certificate: x509.Certificate) -> bool:
        """Whether a CA of the bundle signed `certificate`."""
        return any(self.trusts_as(certificate, pem) for pem in self.trusted)

    @staticmethod
    def trusts_as(certificate: x509.Certificate, authority: bytes) -> bool:
        """Whether the CA certificate `authority` (PEM) signed `certificate`."""
        ca = x509.load_pem_x509_certificate(authority)
        if ca.subject != certificate.issuer:
            return False
        try:
            certificate.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


def _authority(certificate: bytes, key: bytes) -> Issued | None:
    if not certificate or not key:
        return None
    parsed = x509.load_pem_x509_certificate(certificate)
    private = serialization.load_pem_private_key(key, None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.public_key() != (
        parsed.public_key()
    ):
        return None
    return Issued(_pem(parsed), key)


def _not_after(certificate: bytes) -> float:
    return x509.load_pem_x509_certificate(certificate).not_valid_after_utc.timestamp()


def _not_before(certificate: bytes) -> float:
    return x509.load_pem_x509_certificate(certificate).not_valid_before_utc.timestamp()


def advance(
    current: Authorities | None, now: float, lifetimes: Lifetimes, rotate: bool = False
) -> Authorities:
    """The CA state due at `now` (the same object when nothing is due):

    - none, or a signing CA that expires within one certificate lifetime (the operator was
      away for months): a new CA signs at once. Envoys then reconnect only once they have
      their new certificates; what they serve meanwhile stays as it was.
    - a staged CA trusted for `lifetimes.staging`: it signs; the old one stays trusted.
    - the signing CA past half its life minus the staging time, or `rotate` asked for: a
      new CA is staged, trusted but not signing.
    - CA certificates that expired leave the bundle (nothing they signed is valid now).
    """
    if current is None or _not_after(current.signing.certificate) - now < lifetimes.certificate:
        fresh = new_authority(now, lifetimes.authority)
        kept = () if current is None else _unexpired(current.trusted, now)
        return Authorities(fresh, None, (*kept, fresh.certificate))
    state = current
    if state.staged is not None and now >= _not_before(state.staged.certificate) + (
        _backdate(lifetimes.authority) + lifetimes.staging
    ):
        state = Authorities(state.staged, None, state.trusted)
    elif state.staged is None and (
        rotate
        or now
        >= _not_before(state.signing.certificate)
        + _backdate(lifetimes.authority)
        + lifetimes.authority / 2
        - lifetimes.staging
    ):
        staged = new_authority(now, lifetimes.authority)
        state = Authorities(state.signing, staged, (*state.trusted, staged.certificate))
    trusted = _unexpired(state.trusted, now)
    if trusted != state.trusted:
        state = Authorities(state.signing, state.staged, trusted)
    return state


def _unexpired(trusted: tuple[bytes, ...], now: float) -> tuple[bytes, ...]:
    return tuple(pem for pem in trusted if _not_after(pem) > now)


def renewal_due(certificate: bytes, now: float) -> float:
    """When a leaf certificate should be replaced: at half its life."""
    parsed = x509.load_pem_x509_certificate(certificate)
    start = parsed.not_valid_before_utc.timestamp()
    return start + (parsed.not_valid_after_utc.timestamp() - start) / 2


def gateway_certificate_usable(
    issued: Issued, authorities: Authorities, namespace: str, name: str, now: float
) -> bool:
    """Whether a gateway's certificate may stay: it names that gateway, a trusted CA signed
    it, its key is its own, and it is not due for renewal."""
    try:
        parsed = issued.parsed
        private = serialization.load_pem_private_key(issued.key, None)
        uris = parsed.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return (
        uris == [gateway_id(namespace, name)]
        and private.public_key() == parsed.public_key()
        and authorities.trusts(parsed)
        and now < renewal_due(issued.certificate, now)
    )
