"""Certificates: the runtime's own CA and serving certificate, and when to renew them.

The TLS Secret (``kubernetes.io/tls``, named by ``config.tls.secret_name``) holds, runtime mode:

- ``tls.crt``: the serving certificate (PEM, leaf only);
- ``tls.key``: its private key (PKCS#8 PEM);
- ``ca.crt``: every CA certificate callers must trust (PEM blocks, oldest first); during a CA
  rollover it holds both the old and the next CA;
- ``ca.key``: the private keys of the CAs in ``ca.crt`` that may still sign (PKCS#8 PEM blocks),
  each matched to its certificate by public key.

The Secret carries the label ``kube-sts.io/tls-secret: "v1"``; a Secret without it is
foreign and never overwritten. The Deployment mounts only ``tls.crt``, ``tls.key`` and ``ca.crt``
(volume ``items``), so the CA key stays out of the serving containers' file system.

Renewal is a pure function of the bundle and the clock, so every replica takes the same decision:
the serving certificate is renewed at two thirds of its life; a next CA is added to ``ca.crt``
``ca_rollover_lead`` before the current CA expires and signs only after it has been published for
``ca_overlap``; a CA leaves the bundle only once it has expired, so ``ca.crt`` always holds the CA
of every certificate any replica may still be serving.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kube_sts.runtime import config

__all__ = [
    "LABEL",
    "LABEL_VALUE",
    "Authority",
    "Bundle",
    "CertificateError",
    "Decision",
    "Policy",
    "apply",
    "create",
    "decide",
    "dns_names",
    "dump_pem",
    "fingerprint",
    "from_secret_data",
    "load_pem_certificates",
    "next_change",
    "renew_at",
    "signer",
    "to_secret_data",
]

LABEL = config.TLS_SECRET_LABEL
"""Marks a TLS Secret the runtime created and may update."""
LABEL_VALUE = "v1"
DATA_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.key")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_DAY = datetime.timedelta(days=1)


class CertificateError(ValueError):
    """Certificate material that cannot be used; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """Lifetimes and renewal points. The defaults suit a CA nobody else manages."""

    ca_validity: datetime.timedelta = 3650 * _DAY
    ca_rollover_lead: datetime.timedelta = 730 * _DAY
    """Add the next CA to the bundle this long before the current CA expires."""
    ca_overlap: datetime.timedelta = 365 * _DAY
    """A next CA is published this long before it signs anything."""
    serving_validity: datetime.timedelta = 365 * _DAY
    serving_renew_fraction: float = 2 / 3
    """Renew the serving certificate once this fraction of its life has passed."""
    backdate: datetime.timedelta = datetime.timedelta(minutes=5)
    """``notBefore`` lies this far in the past, for clocks running slightly behind."""

    def __post_init__(self) -> None:
        if not self.ca_overlap < self.ca_rollover_lead < self.ca_validity:
            raise ValueError("need ca_overlap < ca_rollover_lead < ca_validity")
        if not 0 < self.serving_renew_fraction < 1:
            raise ValueError("serving_renew_fraction must lie strictly between 0 and 1")
        if self.serving_validity > self.ca_rollover_lead - self.ca_overlap:
            raise ValueError("serving_validity must not exceed ca_rollover_lead - ca_overlap")


@dataclasses.dataclass(frozen=True)
class Authority:
    """One CA of the bundle; ``private_key`` is None once it may no longer sign."""

    certificate: x509.Certificate
    private_key: PrivateKey | None


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Everything the TLS Secret holds."""

    authorities: tuple[Authority, ...]
    certificate: x509.Certificate
    private_key: PrivateKey

    def ca_pem(self) -> bytes:
        return b"".join(dump_pem(a.certificate) for a in self.authorities)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What ``apply`` must do to a bundle; empty means nothing."""

    add_ca: bool = False
    drop_cas: tuple[str, ...] = ()
    """Fingerprints of CAs to remove (expired)."""
    forget_keys: tuple[str, ...] = ()
    """Fingerprints of CAs whose private key is no longer needed."""
    reissue: bool = False
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.add_ca or self.reissue or bool(self.drop_cas) or bool(self.forget_keys)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def dump_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: PrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _new_authority(now: datetime.datetime, policy: Policy, common_name: str) -> Authority:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kube-sts"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA {now:%Y-%m-%dT%H:%M:%SZ}"),
        ]
    )
    not_before = now - policy.backdate
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + policy.ca_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signatures (TLS with ECDSA keys); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    authority: Authority, names: Sequence[str], now: datetime.datetime, policy: Policy
) -> tuple[x509.Certificate, PrivateKey]:
    if authority.private_key is None:
        raise CertificateError("the signing CA has no private key")
    if not names:
        raise CertificateError("no DNS names for the serving certificate; set tls.dnsNames")
    key = _new_key()
    ca = authority.certificate
    not_before = now - policy.backdate
    not_after = min(not_before + policy.serving_validity, ca.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.private_key.public_key()),
            critical=False,
        )
        .sign(authority.private_key, hashes.SHA256())
    )
    return certificate, key


def create(names: Sequence[str], now: datetime.datetime, policy: Policy = Policy()) -> Bundle:
    """A fresh CA and a serving certificate for ``names`` signed by it."""
    authority = _new_authority(now, policy, names[0] if names else "kube-sts")
    certificate, key = _issue(authority, names, now, policy)
    return Bundle((authority,), certificate, key)


def _valid(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc


def signer(bundle: Bundle, now: datetime.datetime, policy: Policy = Policy()) -> Authority | None:
    """The CA that signs at ``now``: the newest one published for ``ca_overlap``, else the oldest.

    Only CAs with a private key that are valid at ``now`` qualify.
    """
    usable = sorted(
        (a for a in bundle.authorities if a.private_key is not None and _valid(a.certificate, now)),
        key=lambda a: a.certificate.not_valid_before_utc,
    )
    if not usable:
        return None
    active = [a for a in usable if a.certificate.not_valid_before_utc + policy.backdate + policy.ca_overlap <= now]
    return active[-1] if active else usable[0]


def _issued_by(certificate: x509.Certificate, authority: Authority) -> bool:
    """Whether ``authority`` signed ``certificate``: a signature check, not a path validation.
    ``decide`` asks about the validity window and the names separately (each change has its own
    reason), so a ``cryptography.x509.verification`` verifier, which needs a time and a name and
    fails all of them with one error, would not say which; ``verify_directly_issued_by`` is the
    library's check for exactly this question."""
    ca = authority.certificate
    if certificate.issuer != ca.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, exceptions.InvalidSignature):
        return False
    return True


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(extension.value.get_values_for_type(x509.DNSName))


def renew_at(certificate: x509.Certificate, policy: Policy = Policy()) -> datetime.datetime:
    """When a serving certificate is due for renewal."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return start + (end - start) * policy.serving_renew_fraction


def decide(bundle: Bundle, names: Sequence[str], now: datetime.datetime, policy: Policy = Policy()) -> Decision:
    """What must change in ``bundle`` at ``now`` (pure)."""
    reasons: list[str] = []
    live = [a for a in bundle.authorities if now < a.certificate.not_valid_after_utc]
    drop = tuple(fingerprint(a.certificate) for a in bundle.authorities if now >= a.certificate.not_valid_after_utc)
    for a in bundle.authorities:
        if now >= a.certificate.not_valid_after_utc:
            reasons.append(f"CA {a.certificate.subject.rfc4514_string()} expired; removed from the bundle")
    newest = max(live, key=lambda a: a.certificate.not_valid_before_utc, default=None)
    add_ca = False
    if newest is None or newest.private_key is None:
        add_ca = True
        reasons.append("no CA can sign; creating one")
    elif newest.certificate.not_valid_after_utc - now <= policy.ca_rollover_lead:
        add_ca = True
        reasons.append(
            f"CA expires {newest.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; publishing the next CA"
        )
    current = signer(bundle, now, policy)
    keep_keys = {fingerprint(current.certificate)} if current is not None else set()
    if newest is not None:
        keep_keys.add(fingerprint(newest.certificate))
    forget: tuple[str, ...] = ()
    if current is not None:
        forget = tuple(
            fingerprint(a.certificate)
            for a in live
            if a.private_key is not None
            and fingerprint(a.certificate) not in keep_keys
            and a.certificate.not_valid_before_utc < current.certificate.not_valid_before_utc
        )
    leaf = bundle.certificate
    reissue_reasons: list[str] = []
    if _public_der(bundle.private_key) != _public_der(leaf):
        reissue_reasons.append("the serving key does not match the serving certificate")
    if not any(_issued_by(leaf, a) for a in live):
        reissue_reasons.append("the serving certificate is not signed by a CA in the bundle")
    if set(dns_names(leaf)) != set(names):
        reissue_reasons.append(f"the serving certificate's names {sorted(dns_names(leaf))} differ from {sorted(names)}")
    if now >= renew_at(leaf, policy):
        reissue_reasons.append(f"the serving certificate expires {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    elif now < leaf.not_valid_before_utc:
        reissue_reasons.append("the serving certificate is not yet valid")
    return Decision(
        add_ca=add_ca,
        drop_cas=drop,
        forget_keys=forget,
        reissue=bool(reissue_reasons),
        reasons=tuple(reasons + reissue_reasons),
    )


def apply(
    bundle: Bundle,
    decision: Decision,
    names: Sequence[str],
    now: datetime.datetime,
    policy: Policy = Policy(),
) -> Bundle:
    """Carry out ``decision``: new keys and certificates are generated here."""
    authorities = [a for a in bundle.authorities if fingerprint(a.certificate) not in decision.drop_cas]
    authorities = [
        Authority(a.certificate, None) if fingerprint(a.certificate) in decision.forget_keys else a for a in authorities
    ]
    if decision.add_ca:
        authorities.append(_new_authority(now, policy, names[0] if names else "kube-sts"))
    result = Bundle(tuple(authorities), bundle.certificate, bundle.private_key)
    if decision.reissue:
        authority = signer(result, now, policy)
        if authority is None:
            raise CertificateError("no CA in the bundle can sign")
        certificate, key = _issue(authority, names, now, policy)
        result = Bundle(result.authorities, certificate, key)
    return result


def next_change(bundle: Bundle, now: datetime.datetime, policy: Policy = Policy()) -> datetime.datetime:
    """The earliest moment after ``now`` at which ``decide`` may answer differently."""
    moments = [renew_at(bundle.certificate, policy), bundle.certificate.not_valid_after_utc]
    for a in bundle.authorities:
        ca = a.certificate
        moments += [
            ca.not_valid_after_utc,
            ca.not_valid_after_utc - policy.ca_rollover_lead,
            ca.not_valid_before_utc + policy.backdate + policy.ca_overlap,
        ]
    future = [m for m in moments if m > now]
    return min(future) if future else now + _DAY


def load_pem_certificates(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM text; CertificateError when there is none or one is broken."""
    try:
        certificates = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise CertificateError(f"{what} is not PEM certificate data: {exc}") from None
    if not certificates:
        raise CertificateError(f"{what} holds no certificate")
    return certificates


def _load_keys(data: bytes, what: str) -> list[PrivateKey]:
    keys: list[PrivateKey] = []
    marker = b"-----END PRIVATE KEY-----"
    blocks = [block + marker for block in data.split(marker) if block.strip()]
    for index, block in enumerate(blocks):
        try:
            key = serialization.load_pem_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"{what} block {index + 1} is not an unencrypted PKCS#8 key: {exc}") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise CertificateError(f"{what} block {index + 1} is neither an ECDSA nor an RSA key")
        keys.append(key)
    return keys


def to_secret_data(bundle: Bundle) -> dict[str, bytes]:
    """The Secret's data (raw bytes, not base64)."""
    return {
        "tls.crt": dump_pem(bundle.certificate),
        "tls.key": _key_pem(bundle.private_key),
        "ca.crt": bundle.ca_pem(),
        "ca.key": b"".join(_key_pem(a.private_key) for a in bundle.authorities if a.private_key is not None),
    }


def from_secret_data(data: dict[str, bytes]) -> Bundle:
    """Parse a Secret's data (raw bytes); CertificateError names the broken key."""
    missing = [k for k in DATA_KEYS if not data.get(k)]
    if missing:
        raise CertificateError(f"data keys {', '.join(missing)} are missing or empty")
    (leaf, *extra) = load_pem_certificates(data["tls.crt"], "tls.crt")
    leaf_keys = _load_keys(data["tls.key"], "tls.key")
    if len(leaf_keys) != 1:
        raise CertificateError(f"tls.key holds {len(leaf_keys)} keys; expected one")
    cas = load_pem_certificates(data["ca.crt"], "ca.crt")
    ca_keys = {_public_der(k): k for k in _load_keys(data["ca.key"], "ca.key")}
    authorities: list[Authority] = []
    for ca in cas:
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateError(f"ca.crt holds {ca.subject.rfc4514_string()}, which is not a CA")
        authorities.append(Authority(ca, ca_keys.pop(_public_der(ca), None)))
    if ca_keys:
        raise CertificateError("ca.key holds a key that matches no certificate in ca.crt")
    if extra:
        raise CertificateError("tls.crt holds more than the serving certificate")
    return Bundle(tuple(authorities), leaf, leaf_keys[0])
