"""Key sets: an endpoint's signing keys with the time window in which each one signs.

The serialized form (the ``keyset.json`` data key of the endpoint's Secret) is, version 1::

    {
      "version": 1,
      "endpoint": "<endpoint name>",          (optional; the runtime refuses another endpoint's set)
      "keys": [
        {
          "kid": "<RFC 7638 JWK thumbprint, SHA-256, base64url>",
          "alg": "RS256" | "ES256",
          "created": <epoch seconds>,
          "signFrom": <epoch seconds>,
          "signUntil": <epoch seconds>,
          "privateKey": "<unencrypted PKCS#8 PEM>"
        }
      ]
    }

The pydantic models ``_Document`` and ``_KeyEntry`` are this format (no other field, integers that
are not booleans); ``loads`` words the first problem they find as the format's terms, without the
private key. A key signs during ``[signFrom, signUntil)``. It is published in the JWKS from the moment it is
in the set (rotation adds it ``publish_lead`` before ``signFrom``) until ``signUntil`` plus the
retention (token lifetime plus clock skew), so every token it signed verifies until it expires.
Which key signs is a pure function of the set and the clock, so every replica agrees: among the
keys whose window contains ``now``, the one with the latest ``signFrom``, ties broken by the
greatest ``kid``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Collection, Iterable
from typing import Annotated, Any, Literal, cast

import pydantic
import pydantic_core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from kube_sts.runtime import config

__all__ = [
    "ALGORITHMS",
    "CLOCK_SKEW",
    "DEFAULT_RETENTION",
    "FORMAT_VERSION",
    "MIN_RSA_BITS",
    "Key",
    "KeySet",
    "KeySetError",
    "dumps",
    "fingerprint",
    "generate",
    "loads",
    "thumbprint",
]

FORMAT_VERSION = 1
ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
MIN_RSA_BITS = 2048
CLOCK_SKEW = config.CLOCK_SKEW
DEFAULT_RETENTION = 86400 + CLOCK_SKEW
"""Retention when the token lifetime is unknown: the longest lifetime the config allows plus skew."""
MAX_KEYS = 64

Algorithm = Literal["RS256", "ES256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()
_ECDSA = ec.ECDSA(_SHA256)
_FIELDS = ("kid", "alg", "created", "signFrom", "signUntil", "privateKey")


class KeySetError(ValueError):
    """A key set that cannot be used; the message says what is wrong and what to do."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(size, "big"))


def _public_members(private_key: PrivateKey) -> dict[str, str]:
    """The JWK members that identify the public key (RFC 7638 required members)."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    point = private_key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}


def thumbprint(private_key: PrivateKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of the key's public half."""
    canonical = json.dumps(_public_members(private_key), sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


def _check_key(algorithm: str, private_key: object) -> PrivateKey:
    if algorithm == "RS256":
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise KeySetError("alg RS256 needs an RSA private key")
        if private_key.key_size < MIN_RSA_BITS:
            raise KeySetError(f"RSA key of {private_key.key_size} bits is too small; use at least {MIN_RSA_BITS} bits")
        return private_key
    if algorithm == "ES256":
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
            raise KeySetError("alg ES256 needs a P-256 (secp256r1) EC private key")
        return private_key
    raise KeySetError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


@dataclasses.dataclass(frozen=True)
class Key:
    """One signing key and its signing window ``[sign_from, sign_until)`` in epoch seconds."""

    kid: str
    algorithm: Algorithm
    created: int
    sign_from: int
    sign_until: int
    private_key: PrivateKey = dataclasses.field(repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_key(self.algorithm, self.private_key)
        expected = thumbprint(self.private_key)
        if self.kid != expected:
            raise KeySetError(f"kid {self.kid!r} does not match the key; its RFC 7638 thumbprint is {expected!r}")
        if self.sign_until <= self.sign_from:
            raise KeySetError(
                f"key {self.kid}: signUntil ({self.sign_until}) must be after signFrom ({self.sign_from})"
            )

    def signs_at(self, now: int) -> bool:
        return self.sign_from <= now < self.sign_until

    def sign(self, message: bytes) -> bytes:
        """The JWS signature of ``message`` (RFC 7518 section 3): RSASSA-PKCS1-v1_5 with SHA-256
        for RS256, the fixed-width big-endian ``R || S`` (64 bytes) of ECDSA P-256 for ES256."""
        private = self.private_key
        if isinstance(private, rsa.RSAPrivateKey):
            return private.sign(message, _PKCS1, _SHA256)
        r, s = utils.decode_dss_signature(private.sign(message, _ECDSA))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_jwk(self) -> dict[str, str]:
        """The public JWK: kty, kid, use, alg and n/e (RSA) or crv/x/y (EC)."""
        return {**_public_members(self.private_key), "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    def replace(self, *, sign_from: int | None = None, sign_until: int | None = None) -> Key:
        return dataclasses.replace(
            self,
            sign_from=self.sign_from if sign_from is None else sign_from,
            sign_until=self.sign_until if sign_until is None else sign_until,
        )


def _order(key: Key) -> tuple[int, str]:
    return (key.sign_from, key.kid)


@dataclasses.dataclass(frozen=True)
class KeySet:
    """An endpoint's keys, kept in ``(sign_from, kid)`` order."""

    keys: tuple[Key, ...] = ()
    endpoint: str | None = None
    """The endpoint this set belongs to, when recorded."""

    def __post_init__(self) -> None:
        if self.endpoint is not None and not (isinstance(self.endpoint, str) and self.endpoint):
            raise KeySetError("'endpoint' must be a non-empty string")
        seen: set[str] = set()
        for key in self.keys:
            if key.kid in seen:
                raise KeySetError(f"duplicate kid {key.kid!r}; every key must appear once")
            seen.add(key.kid)
        if len(self.keys) > MAX_KEYS:
            raise KeySetError(f"{len(self.keys)} keys; at most {MAX_KEYS} are allowed, remove retired keys")
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=_order)))

    def get(self, kid: str) -> Key | None:
        return next((key for key in self.keys if key.kid == kid), None)

    def candidates(self, now: int, held: Collection[str] = ()) -> tuple[Key, ...]:
        """Keys that may sign at ``now`` (not held back), best first."""
        found = [key for key in self.keys if key.signs_at(now) and key.kid not in held]
        return tuple(sorted(found, key=_order, reverse=True))

    def signing_key(self, now: int, held: Collection[str] = ()) -> Key:
        """The key that signs at ``now``; raises ``KeySetError`` with the reason when none can.

        ``held`` names keys that must not sign (for example not yet served by the issuer's public
        JWKS): the best key in its window that is not held signs. A held key never signs, even
        when it is the only one in its window: a token signed by a key the relying parties cannot
        fetch fails there, while a refusal here keeps the caller's last good token in use.
        """
        found = self.candidates(now, held)
        if found:
            return found[0]
        waiting = self.candidates(now)
        if waiting:
            kids = ", ".join(key.kid for key in waiting)
            raise KeySetError(f"no key can sign at {now}: {kids} is not served by the issuer's JWKS yet")
        if not self.keys:
            raise KeySetError("the key set has no keys; create one with `sts-compile keys create`")
        upcoming = [key for key in self.keys if key.sign_from > now]
        if upcoming:
            first = min(upcoming, key=_order)
            raise KeySetError(f"no key can sign at {now}: the next key {first.kid} signs from {first.sign_from}")
        last = max(key.sign_until for key in self.keys)
        raise KeySetError(f"no key can sign at {now}: every key stopped signing (last at {last}); add a key")

    def published(self, now: int, retention: int = DEFAULT_RETENTION) -> tuple[Key, ...]:
        """Keys to serve in the JWKS at ``now``: all but those retired more than ``retention`` ago.

        ``retention`` is the token lifetime plus clock skew; the default covers the longest
        lifetime the configuration allows.
        """
        return tuple(key for key in self.keys if now < key.sign_until + retention)

    def jwks(self, now: int, retention: int = DEFAULT_RETENTION) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.public_jwk() for key in self.published(now, retention)]}

    def with_keys(self, keys: Iterable[Key]) -> KeySet:
        return KeySet(tuple(keys), self.endpoint)


def generate(
    algorithm: str = "RS256",
    *,
    created: int,
    sign_from: int,
    sign_until: int,
    rsa_bits: int = MIN_RSA_BITS,
) -> Key:
    """A new key of ``algorithm`` signing during ``[sign_from, sign_until)``."""
    private_key: PrivateKey
    if algorithm == "RS256":
        if rsa_bits < MIN_RSA_BITS:
            raise KeySetError(f"RSA keys need at least {MIN_RSA_BITS} bits, not {rsa_bits}")
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeySetError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    return Key(
        kid=thumbprint(private_key),
        algorithm=cast(Algorithm, algorithm),
        created=created,
        sign_from=sign_from,
        sign_until=sign_until,
        private_key=private_key,
    )


def _pem(value: object) -> object:
    """The private key of a PEM string (its type and size are checked with the algorithm)."""
    if not isinstance(value, str):
        raise pydantic_core.PydanticCustomError("string_type", "not a string")
    try:
        loaded = serialization.load_pem_private_key(value.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise pydantic_core.PydanticCustomError("pem", "{reason}", {"reason": str(exc)}) from None
    return loaded


_EpochSeconds = Annotated[int, pydantic.Field(ge=0, strict=True)]


class _KeyEntry(pydantic.BaseModel):
    """One entry of ``keys`` as the file holds it."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    kid: str
    alg: Algorithm
    created: _EpochSeconds
    sign_from: _EpochSeconds = pydantic.Field(alias="signFrom")
    sign_until: _EpochSeconds = pydantic.Field(alias="signUntil")
    private_key: Annotated[object, pydantic.PlainValidator(_pem)] = pydantic.Field(alias="privateKey")


class _Document(pydantic.BaseModel):
    """The ``keyset.json`` file: version 1."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Literal[1]
    endpoint: Annotated[str, pydantic.Field(min_length=1)] | None = None
    keys: list[_KeyEntry]


_TOP_LEVEL = ("", "version", "extra", "keys", "endpoint")
_ENTRY = ("", "missing", "extra", "alg", "kid", "privateKey", "created", "signFrom", "signUntil")


def _rank(error: pydantic_core.ErrorDetails) -> tuple[int, int, int, str]:
    """The order in which the format's checks report: the top level first, then the entries in order."""
    loc = error["loc"]
    extra = error["type"] == "extra_forbidden"
    if not loc:
        return (0, 0, 0, "")
    if loc[0] != "keys" or len(loc) == 1:
        top = "extra" if extra else str(loc[0])
        return (_TOP_LEVEL.index(top), 0, 0, str(loc[0]))
    index = int(loc[1])
    if len(loc) == 2:
        return (len(_TOP_LEVEL), index, 0, "")
    field = str(loc[2])
    what = "missing" if error["type"] == "missing" else "extra" if extra else field
    rank = _ENTRY.index(what) if what in _ENTRY else _ENTRY.index("kid")
    return (len(_TOP_LEVEL), index, rank, field)


def _problem(errors: list[pydantic_core.ErrorDetails], document: Any) -> str:
    """The message of the first failed check, worded as the format describes it (no input values
    that could be key material: only versions, algorithms and epoch seconds are quoted)."""
    first = min(errors, key=_rank)
    loc = first["loc"]
    if not loc:
        return "not a key set: expected a JSON object with 'version' and 'keys'"
    if loc[0] == "version":
        version = document.get("version")
        return f"unsupported key set version {version!r}; this runtime reads version {FORMAT_VERSION}"
    if first["type"] == "extra_forbidden" and len(loc) == 1:
        return f"unknown top-level field {min(set(document) - set(_Document.model_fields))!r}"
    if loc == ("keys",):
        return "'keys' must be a list"
    if loc[0] == "endpoint":
        return "'endpoint' must be a non-empty string"
    index = loc[1]
    where = f"keys[{index}]"
    if len(loc) == 2:
        return f"{where}: expected an object"
    entry = document["keys"][index]
    if first["type"] == "missing":
        return f"{where}: missing {', '.join(name for name in _FIELDS if name not in entry)}"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field {min(set(entry) - set(_FIELDS))!r}"
    field = loc[2]
    if field == "alg":
        return f"{where}.alg: unknown algorithm {entry['alg']!r}; use one of {', '.join(ALGORITHMS)}"
    if field == "privateKey" and first["type"] == "pem":
        return f"{where}.privateKey: not an unencrypted PEM private key ({first['msg']})"
    if field in ("kid", "privateKey"):
        return f"{where}: kid and privateKey must be strings"
    return f"{where}.{field}: expected epoch seconds (a non-negative integer), got {entry[field]!r}"


def _key(entry: _KeyEntry, where: str) -> Key:
    try:
        return Key(
            kid=entry.kid,
            algorithm=entry.alg,
            created=entry.created,
            sign_from=entry.sign_from,
            sign_until=entry.sign_until,
            private_key=_check_key(entry.alg, entry.private_key),
        )
    except KeySetError as exc:
        raise KeySetError(f"{where}: {exc}") from None


def loads(data: bytes | str) -> KeySet:
    """Parse and check a serialized key set; every problem raises ``KeySetError``."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeySetError(f"not a key set: corrupt or truncated JSON ({exc})") from None
    try:
        parsed = _Document.model_validate(document)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_input=False)
        first = min(errors, key=_rank)["loc"]
        if first[:1] == ("keys",) and len(first) > 1:  # the entries before it are checked whole first
            for index in range(int(first[1])):
                _key(_KeyEntry.model_validate(document["keys"][index]), f"keys[{index}]")
        raise KeySetError(_problem(errors, document)) from None
    keys = tuple(_key(entry, f"keys[{index}]") for index, entry in enumerate(parsed.keys))
    return KeySet(keys, parsed.endpoint)


def dumps(keyset: KeySet) -> bytes:
    """Serialize deterministically (keys in ``(signFrom, kid)`` order, two-space indent)."""
    entries = [
        {
            "kid": key.kid,
            "alg": key.algorithm,
            "created": key.created,
            "signFrom": key.sign_from,
            "signUntil": key.sign_until,
            "privateKey": key.private_pem(),
        }
        for key in keyset.keys
    ]
    document: dict[str, Any] = {"version": FORMAT_VERSION}
    if keyset.endpoint is not None:
        document["endpoint"] = keyset.endpoint
    document["keys"] = entries
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def fingerprint(keyset: KeySet) -> str:
    """A short digest of the public content, for logs (never the private key)."""
    digest = hashlib.sha256()
    for key in keyset.keys:
        digest.update(f"{key.kid}:{key.sign_from}:{key.sign_until};".encode("ascii"))
    return digest.hexdigest()[:16]
