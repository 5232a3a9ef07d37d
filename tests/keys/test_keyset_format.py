"""The key set format: round trip, public JWKs, and every class of bad input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwk as jose_jwk
from joserfc import jws
from joserfc.errors import BadSignatureError
from jwcrypto import jwk as jwcrypto_jwk

from kube_sts.runtime.keys import keyset


@pytest.fixture(scope="module")
def rsa_key() -> keyset.Key:
    return keyset.generate("RS256", created=100, sign_from=200, sign_until=1200)


@pytest.fixture(scope="module")
def ec_key() -> keyset.Key:
    return keyset.generate("ES256", created=150, sign_from=1000, sign_until=2000)


@pytest.fixture(scope="module")
def document(rsa_key: keyset.Key, ec_key: keyset.Key) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(keyset.dumps(keyset.KeySet((ec_key, rsa_key))))
    return parsed


def pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_round_trip_is_exact_and_deterministic(rsa_key: keyset.Key, ec_key: keyset.Key) -> None:
    original = keyset.KeySet((ec_key, rsa_key))
    data = keyset.dumps(original)
    loaded = keyset.loads(data)
    assert keyset.dumps(loaded) == data
    assert [key.kid for key in loaded.keys] == [rsa_key.kid, ec_key.kid]  # ordered by signFrom
    assert loaded == original
    for before, after in zip(original.keys, loaded.keys, strict=True):
        assert after.public_jwk() == before.public_jwk()
        assert after.private_pem() == before.private_pem()
    document = json.loads(data)
    assert document["version"] == keyset.FORMAT_VERSION
    assert list(document["keys"][0]) == ["kid", "alg", "created", "signFrom", "signUntil", "privateKey"]
    assert document["keys"][0]["privateKey"].startswith("-----BEGIN PRIVATE KEY-----")


def test_public_jwk_and_thumbprint_match_independent_libraries(rsa_key: keyset.Key, ec_key: keyset.Key) -> None:
    for key in (rsa_key, ec_key):
        public = key.public_jwk()
        assert public["kid"] == key.kid
        assert public["use"] == "sig"
        assert public["alg"] == key.algorithm
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(public)
        assert jwcrypto_jwk.JWK(**public).thumbprint() == key.kid
        assert jose_jwk.import_key(public).thumbprint() == key.kid  # type: ignore[arg-type]
    assert set(rsa_key.public_jwk()) == {"kty", "kid", "use", "alg", "n", "e"}
    assert set(ec_key.public_jwk()) == {"kty", "kid", "use", "alg", "crv", "x", "y"}
    assert ec_key.public_jwk()["crv"] == "P-256"
    assert "PRIVATE" not in repr(rsa_key)


def test_signing_choice_and_publication(rsa_key: keyset.Key, ec_key: keyset.Key) -> None:
    keys = keyset.KeySet((rsa_key, ec_key))
    assert keys.signing_key(200).kid == rsa_key.kid
    assert keys.signing_key(1000).kid == ec_key.kid  # overlap: the later signFrom wins
    assert keys.signing_key(1000, held={ec_key.kid}).kid == rsa_key.kid
    with pytest.raises(keyset.KeySetError, match=f"{ec_key.kid} is not served by the issuer's JWKS yet"):
        keys.signing_key(1500, held={ec_key.kid})  # a held key never signs, even when alone
    assert [key.kid for key in keys.published(1499, retention=300)] == [rsa_key.kid, ec_key.kid]
    assert [key.kid for key in keys.published(1500, retention=300)] == [ec_key.kid]
    assert keys.jwks(0)["keys"] == [rsa_key.public_jwk(), ec_key.public_jwk()]


@pytest.mark.parametrize(
    ("now", "reason"),
    [(100, "the next key .* signs from 200"), (2000, "every key stopped signing")],
)
def test_no_key_able_to_sign_now(rsa_key: keyset.Key, ec_key: keyset.Key, now: int, reason: str) -> None:
    with pytest.raises(keyset.KeySetError, match=reason):
        keyset.KeySet((rsa_key, ec_key)).signing_key(now)
    with pytest.raises(keyset.KeySetError, match="has no keys"):
        keyset.KeySet().signing_key(now)


def _mutate(document: dict[str, Any], **changes: Any) -> bytes:
    entry = dict(document["keys"][0], **changes)
    for name, value in changes.items():
        if value is None:
            del entry[name]
    return json.dumps({"version": 1, "keys": [entry, *document["keys"][1:]]}).encode()


def test_bad_inputs(document: dict[str, Any]) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    good = json.dumps(document).encode()
    cases: list[tuple[bytes, str]] = [
        (good[: len(good) // 2], "corrupt or truncated JSON"),
        (b"\xff\xfe garbage", "corrupt or truncated JSON"),
        (b"", "corrupt or truncated JSON"),
        (b"[]", "expected a JSON object"),
        (json.dumps({"version": 2, "keys": []}).encode(), "unsupported key set version 2"),
        (json.dumps({"version": 1, "keys": {}}).encode(), "'keys' must be a list"),
        (json.dumps({"version": 1, "keys": [], "extra": 1}).encode(), "unknown top-level field 'extra'"),
        (_mutate(document, alg="HS256"), r"keys\[0\].alg: unknown algorithm 'HS256'"),
        (_mutate(document, alg="ES256"), r"keys\[0\]: alg ES256 needs a P-256"),
        (_mutate(document, privateKey=pem(small), kid=keyset.thumbprint(small)), "1024 bits is too small"),
        (_mutate(document, privateKey=pem(p384), alg="ES256"), "needs a P-256"),
        (_mutate(document, privateKey="-----BEGIN PRIVATE KEY-----\nAAAA\n"), "not an unencrypted PEM"),
        (_mutate(document, kid="made-up"), "kid 'made-up' does not match the key"),
        (_mutate(document, signUntil=document["keys"][0]["signFrom"]), "signUntil .* must be after signFrom"),
        (_mutate(document, created=True), r"keys\[0\].created: expected epoch seconds"),
        (_mutate(document, signFrom=-1), r"keys\[0\].signFrom: expected epoch seconds"),
        (_mutate(document, created=None), r"keys\[0\]: missing created"),
        (_mutate(document, comment="x"), r"keys\[0\]: unknown field 'comment'"),
        (_mutate(document, kid=7), "kid and privateKey must be strings"),
        (json.dumps({"version": 1, "keys": [document["keys"][0]] * 2}).encode(), "duplicate kid"),
    ]
    for data, message in cases:
        with pytest.raises(keyset.KeySetError, match=message):
            keyset.loads(data)


def test_messages_never_contain_private_key_material(document: dict[str, Any]) -> None:
    secret_line = document["keys"][0]["privateKey"].splitlines()[1]
    for data in (_mutate(document, kid="x"), _mutate(document, alg="ES256"), _mutate(document, signFrom="soon")):
        with pytest.raises(keyset.KeySetError) as raised:
            keyset.loads(data)
        assert secret_line not in str(raised.value)


def test_generate_rejects_weak_or_unknown_keys() -> None:
    with pytest.raises(keyset.KeySetError, match="at least 2048 bits"):
        keyset.generate("RS256", created=0, sign_from=0, sign_until=1, rsa_bits=1024)
    with pytest.raises(keyset.KeySetError, match="unknown algorithm 'PS256'"):
        keyset.generate("PS256", created=0, sign_from=0, sign_until=1)
    assert keyset.generate("RS256", created=0, sign_from=0, sign_until=1, rsa_bits=3072).private_key.key_size == 3072


def test_too_many_keys(ec_key: keyset.Key) -> None:
    many = [ec_key.replace()] + [
        keyset.generate("ES256", created=0, sign_from=i, sign_until=i + 1) for i in range(keyset.MAX_KEYS)
    ]
    with pytest.raises(keyset.KeySetError, match="at most 64"):
        keyset.KeySet(tuple(many))


def test_jws_signatures_verify_from_the_public_jwk_alone(rsa_key: keyset.Key, ec_key: keyset.Key) -> None:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    for key, size in ((rsa_key, 256), (ec_key, 64)):
        signing_input = b64(json.dumps({"alg": key.algorithm}).encode()) + b"." + b64(b'{"sub":"x"}')
        signature = key.sign(signing_input)
        assert len(signature) == size  # ES256 is raw R || S, never DER (RFC 7518 section 3.4)
        compact = (signing_input + b"." + b64(signature)).decode()
        public = jose_jwk.import_key(key.public_jwk())  # type: ignore[arg-type]
        assert jws.deserialize_compact(compact, public, algorithms=[key.algorithm]).payload == b'{"sub":"x"}'
        tampered = compact[:-4] + ("AAAA" if not compact.endswith("AAAA") else "BBBB")
        with pytest.raises(BadSignatureError):
            jws.deserialize_compact(tampered, public, algorithms=[key.algorithm])
