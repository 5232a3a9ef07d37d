"""Pure certificate logic: what is created, and which decision each moment of a bundle's life gets."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kube_sts.runtime.tls import certificates

NAMES = ("kube-sts", "kube-sts.kube-sts", "kube-sts.kube-sts.svc", "kube-sts.kube-sts.svc.cluster.local")
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_created_bundle_has_a_ca_and_a_serving_certificate_for_every_name() -> None:
    bundle = certificates.create(NAMES, T0)
    (ca,) = bundle.authorities
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert ca.certificate.not_valid_after_utc - ca.certificate.not_valid_before_utc == 3650 * DAY
    leaf = bundle.certificate
    assert certificates.dns_names(leaf) == NAMES
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.not_valid_before_utc == T0 - datetime.timedelta(minutes=5)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == 365 * DAY
    assert not certificates.decide(bundle, NAMES, T0)


def test_secret_data_round_trips() -> None:
    bundle = certificates.create(NAMES, T0)
    data = certificates.to_secret_data(bundle)
    assert sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    again = certificates.from_secret_data(data)
    assert certificates.to_secret_data(again) == data


def test_serving_certificate_is_renewed_at_two_thirds_of_its_life() -> None:
    bundle = certificates.create(NAMES, T0)
    due = certificates.renew_at(bundle.certificate)
    assert due == bundle.certificate.not_valid_before_utc + 365 * DAY * 2 / 3
    assert certificates.next_change(bundle, T0) == due
    assert not certificates.decide(bundle, NAMES, due - datetime.timedelta(seconds=1))
    decision = certificates.decide(bundle, NAMES, due)
    assert decision.reissue and not decision.add_ca
    renewed = certificates.apply(bundle, decision, NAMES, due)
    assert renewed.authorities == bundle.authorities
    assert renewed.certificate.not_valid_before_utc == due - datetime.timedelta(minutes=5)


def test_changed_names_reissue_the_serving_certificate() -> None:
    bundle = certificates.create(NAMES, T0)
    decision = certificates.decide(bundle, (*NAMES, "sts.example"), T0 + DAY)
    assert decision.reissue
    assert "differ" in decision.reasons[0]


def test_ca_rollover_publishes_the_next_ca_before_it_signs_and_drops_the_old_one_after_expiry() -> None:
    bundle = certificates.create(NAMES, T0)
    old = bundle.authorities[0].certificate
    # Renew the leaf on schedule until the rollover point; the CA signs all of them.
    now = T0
    rollover = old.not_valid_after_utc - 730 * DAY
    while now < rollover:
        now = min(certificates.next_change(bundle, now), rollover)
        bundle = certificates.apply(bundle, certificates.decide(bundle, NAMES, now), NAMES, now)
        assert len(bundle.authorities) == (2 if now >= rollover else 1)
    new = bundle.authorities[1].certificate
    assert certificates.signer(bundle, now) == bundle.authorities[0]
    # Through the whole overlap the old CA signs; afterwards the new one does, and both stay published.
    switch = new.not_valid_before_utc + datetime.timedelta(minutes=5) + 365 * DAY
    assert certificates.signer(bundle, switch - datetime.timedelta(seconds=1)) == bundle.authorities[0]
    assert certificates.signer(bundle, switch) == bundle.authorities[1]
    served_issuers = set()
    for _ in range(100):
        now = certificates.next_change(bundle, now)
        if now > old.not_valid_after_utc + DAY:
            break
        decision = certificates.decide(bundle, NAMES, now)
        bundle = certificates.apply(bundle, decision, NAMES, now)
        # Invariant: the CA of the served certificate is always in the bundle, and valid.
        issuer = next(a.certificate for a in bundle.authorities if a.certificate.subject == bundle.certificate.issuer)
        assert issuer.not_valid_before_utc <= now < issuer.not_valid_after_utc
        assert bundle.certificate.not_valid_after_utc <= issuer.not_valid_after_utc
        served_issuers.add(certificates.fingerprint(issuer))
    assert served_issuers == {certificates.fingerprint(old), certificates.fingerprint(new)}
    assert [a.certificate for a in bundle.authorities] == [new]
    assert bundle.authorities[0].private_key is not None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("ca.key"), "ca.key are missing"),
        (lambda d: d.update({"tls.crt": b"garbage"}), "tls.crt is not PEM certificate data"),
        (lambda d: d.update({"tls.key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}), "tls.key"),
        (lambda d: d.update({"ca.crt": d["tls.crt"]}), "which is not a CA"),
    ],
)
def test_broken_secret_data_is_named(mutate: object, message: str) -> None:
    data = certificates.to_secret_data(certificates.create(NAMES, T0))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(certificates.CertificateError, match=message):
        certificates.from_secret_data(data)
