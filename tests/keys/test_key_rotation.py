"""Rotation on a simulated clock: every token verifies, with joserfc, for its whole lifetime."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import hypothesis
import jwt as pyjwt
import pytest
from hypothesis import strategies as st
from joserfc import jwk as jose_jwk
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset, rotation

LIFETIME = 3600
LEAD = 2000
PERIOD = 10_000
POLICY = rotation.Policy(
    algorithm="ES256",
    rotation_period=PERIOD,
    publish_lead=LEAD,
    retention=LIFETIME + keyset.CLOCK_SKEW,
)


def key_factory(algorithm: str) -> Callable[[int, int, int], keyset.Key]:
    def make(created: int, sign_from: int, sign_until: int) -> keyset.Key:
        return keyset.generate(algorithm, created=created, sign_from=sign_from, sign_until=sign_until)

    return make


@dataclasses.dataclass
class Minted:
    at: int
    kid: str
    token: str


@dataclasses.dataclass
class History:
    ticks: list[int]
    jwks: dict[int, tuple[str, ...]]  # tick -> kids published
    documents: dict[tuple[str, ...], jose_jwk.KeySet]
    tokens: list[Minted]
    changes: list[str]
    external: dict[int, tuple[str, ...]]


def mint(key: keyset.Key, now: int) -> str:
    claims = {"iss": "https://issuer.example", "aud": "sts.aws.com", "sub": "c:ns:sa", "iat": now, "nbf": now}
    claims["exp"] = now + LIFETIME
    return pyjwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})


def simulate(
    algorithm: str,
    end: int,
    uploads: Callable[[int], bool] = lambda tick: True,
) -> History:
    """Drive the schedule with a manager ticking at irregular intervals; mint a token every tick.

    ``uploads(tick)`` says whether the operator syncs the issuer documents to the external host
    at that tick; keys the external JWKS does not serve yet are held back.
    """
    make = key_factory(algorithm)
    policy = dataclasses.replace(POLICY, algorithm=algorithm)
    current = keyset.KeySet()
    history = History([], {}, {}, [], [], {})
    served: tuple[str, ...] = ()
    gaps = itertools.cycle([170, 230, 290, 110, 260])
    now = 0
    while now <= end:
        held = {key.kid for key in current.keys} - set(served)
        step = rotation.next_keyset(current, now, policy, make, held)
        history.changes.extend(f"{now}: {change}" for change in step.changes)
        current = step.keyset
        if uploads(now):
            served = tuple(key.kid for key in current.published(now, policy.retention))
        held = {key.kid for key in current.keys} - set(served)
        published = current.published(now, policy.retention)
        kids = tuple(key.kid for key in published)
        if kids not in history.documents:
            document = {"keys": [key.public_jwk() for key in published]}
            history.documents[kids] = jose_jwk.KeySet.import_key_set(document)  # type: ignore[arg-type]
        signer = current.signing_key(now, held)
        history.ticks.append(now)
        history.jwks[now] = kids
        history.external[now] = served
        history.tokens.append(Minted(now, signer.kid, mint(signer, now)))
        now += next(gaps)
    return history


def verifies(token: str, document: jose_jwk.KeySet, algorithm: str, now: int) -> bool:
    try:
        decoded = jose_jwt.decode(token, document, algorithms=[algorithm])
        jose_jwt.JWTClaimsRegistry(now=now, exp={"essential": True}).validate(decoded.claims)
    except (JoseError, ValueError):
        return False
    return True


def check_every_moment(history: History, algorithm: str) -> int:
    """Each token against the JWKS of every later tick of its life, and every JWKS a verifier
    caching for LEAD seconds could hold then; returns the number of verifications."""
    count = 0
    for minted in history.tokens:
        moments = [t for t in history.ticks if minted.at <= t <= minted.at + LIFETIME]
        snapshots = {history.jwks[t] for t in moments}
        cached = {history.jwks[c] for t in moments for c in history.ticks if t - LEAD <= c <= t}
        for kids in sorted(snapshots | cached):
            assert minted.kid in kids, f"token of {minted.at} (kid {minted.kid}) missing from a JWKS it meets"
            assert verifies(minted.token, history.documents[kids], algorithm, minted.at + LIFETIME - 1)
            count += 1
        for t in moments:
            assert minted.kid in history.external[t], f"token of {minted.at} not served externally at {t}"
    return count


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_every_token_verifies_through_several_rotations(algorithm: str) -> None:
    end = 5 * PERIOD + 3000
    history = simulate(algorithm, end)
    signers = [kid for kid, _ in itertools.groupby(minted.kid for minted in history.tokens)]
    assert len(signers) >= 5, history.changes
    assert len(set(signers)) == len(signers), "a retired key signed again"
    assert any("pruned" in change for change in history.changes)
    assert max(len(kids) for kids in history.jwks.values()) <= 3
    assert check_every_moment(history, algorithm) > len(history.tokens)


def test_late_upload_holds_the_new_key_and_the_old_one_keeps_signing() -> None:
    # The operator uploads only at a few moments, long after each new key was added.
    upload_times = {0, 17_000, 29_500, 41_000}
    ticks_seen: list[int] = []

    def uploads(tick: int) -> bool:
        ticks_seen.append(tick)
        due = [t for t in upload_times if t <= tick]
        return bool(due) and max(due) > (ticks_seen[-2] if len(ticks_seen) > 1 else -1)

    history = simulate("ES256", 45_000, uploads)
    assert any("not yet served" in change for change in history.changes)
    for minted in history.tokens:
        assert minted.kid in history.external[minted.at], f"token of {minted.at} signed with an unserved key"
    check_every_moment(history, "ES256")
    # The first rotation waited for the upload at 17000 instead of switching at 10000.
    first_switch = next(n.at for n in history.tokens if n.kid != history.tokens[0].kid)
    assert first_switch >= 17_000
    assert first_switch < 17_000 + 300


def test_schedule_is_a_pure_function_of_key_set_and_clock() -> None:
    make = key_factory("ES256")
    base = rotation.next_keyset(keyset.KeySet(), 0, POLICY, make).keyset
    again = rotation.next_keyset(base, 100, POLICY, make)
    assert not again.changed
    assert again.keyset == base
    due = rotation.next_keyset(base, PERIOD - LEAD, POLICY, make)
    assert [change.split()[0] for change in due.changes] == ["added"]
    successor = due.keyset.keys[-1]
    assert successor.sign_from == PERIOD
    # Every replica picks the same key from the same set and clock.
    replica = keyset.loads(keyset.dumps(due.keyset))
    for now in range(PERIOD - LEAD, PERIOD + 10, 7):
        assert replica.signing_key(now).kid == due.keyset.signing_key(now).kid
    assert due.keyset.signing_key(PERIOD - 1).kid == base.keys[0].kid
    assert due.keyset.signing_key(PERIOD).kid == successor.kid


def test_late_manager_never_leaves_a_gap() -> None:
    make = key_factory("ES256")
    base = rotation.next_keyset(keyset.KeySet(), 0, POLICY, make).keyset
    # No replica ran during the whole lead window: the successor still gets its full lead and
    # the current key keeps signing until then.
    late = PERIOD - 10
    step = rotation.next_keyset(base, late, POLICY, make)
    old, new = step.keyset.keys
    assert new.sign_from == late + LEAD
    assert old.sign_until == new.sign_from
    for now in range(late, new.sign_from + 100, 50):
        step.keyset.signing_key(now)


def test_retention_follows_the_endpoint() -> None:
    endpoint = config.Endpoint.model_validate(
        {
            "name": "aws",
            "audience": "sts.aws.com",
            "path": "/aws",
            "issuer": {"host": "d1.cloudfront.net", "keypair": "aws-keys"},
            "token": {"lifetime": "2h"},
        }
    )
    policy = rotation.Policy.of(endpoint)
    assert policy.retention == 7200 + keyset.CLOCK_SKEW
    assert policy.publish_lead == 86400


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"retainAfter": "1h"}, "retainAfter (3600s) is shorter than token.lifetime (3600s)"),
        ({"rotationPeriod": "1d", "publishLead": "1d"}, "must be longer than publishLead"),
    ],
)
def test_config_rejects_windows_shorter_than_tokens(keys: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.Endpoint.model_validate(
            {
                "name": "aws",
                "audience": "sts.aws.com",
                "path": "/aws",
                "issuer": {"host": "d1.cloudfront.net", "keypair": "aws-keys", "keys": keys},
            }
        )


def test_holding_extends_in_steps_not_on_every_pass() -> None:
    make = key_factory("ES256")
    current = rotation.next_keyset(keyset.KeySet(), 0, POLICY, make).keyset
    current = rotation.next_keyset(current, PERIOD - LEAD, POLICY, make).keyset
    old, new = current.keys
    writes = 0
    for now in range(PERIOD - 1000, PERIOD + 3600, 15):  # a manager ticking every 15 s
        step = rotation.next_keyset(current, now, POLICY, make, held={new.kid})
        writes += step.changed
        current = step.keyset
        assert current.signing_key(now, held={new.kid}).kid == old.kid
    assert 3600 // POLICY.hold_step <= writes <= 2 * (4600 // POLICY.hold_step) + 1
    assert current.get(old.kid).sign_until >= PERIOD + 3600  # type: ignore[union-attr]
    after = rotation.next_keyset(current, PERIOD + 3600, POLICY, make).keyset
    assert after.signing_key(PERIOD + 3600).kid == new.kid  # served: the successor takes over


def test_config_rejects_endpoints_sharing_a_key_set() -> None:
    def endpoint(name: str) -> dict[str, object]:
        return {
            "name": name,
            "audience": "sts.aws.com",
            "path": f"/{name}",
            "issuer": {"host": "d1.cloudfront.net", "keypair": "shared-keys"},
        }

    runtime = {
        "cluster": "c",
        "namespace": "kube-sts",
        "serviceUrl": "https://kube-sts.kube-sts.svc",
        "stsAudience": "kube-sts",
        "sidecarImage": "img",
        "sidecarResources": {},
        "tls": {"secretName": "tls", "dnsNames": ["kube-sts.kube-sts.svc"]},
        "endpoints": [endpoint("aws"), endpoint("prod")],
    }
    with pytest.raises(ValueError, match=r"endpoints 'aws' and 'prod' share issuer\.keypair 'shared-keys'"):
        config.RuntimeConfig.model_validate(runtime)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    gaps=st.lists(st.integers(min_value=1, max_value=LEAD - 1), min_size=50, max_size=250),
    uploads=st.lists(st.booleans(), min_size=50, max_size=250),
)
def test_schedule_invariants_for_any_manager_timing(gaps: list[int], uploads: list[bool]) -> None:
    """Whatever the timing of passes (never a lead time apart) and of uploads: the signer is
    always served by the issuer; no key signs only when a pass came more than half a hold step
    after the previous one (the served key's extension ran out meanwhile); and every key stays in
    the JWKS from a lead time before it signs until its last token expires."""
    make = key_factory("ES256")
    current = keyset.KeySet()
    served: set[str] = set()
    now = 0
    history: list[tuple[int, str, frozenset[str]]] = []
    for index, gap in enumerate(gaps):
        held = {key.kid for key in current.keys} - served
        current = rotation.next_keyset(current, now, POLICY, make, held).keyset
        if index == 0 or uploads[index % len(uploads)]:
            served = {key.kid for key in current.published(now, POLICY.retention)}
        held = {key.kid for key in current.keys} - served
        try:
            signer = current.signing_key(now, held)
        except keyset.KeySetError as exc:
            assert "is not served by the issuer's JWKS yet" in str(exc)
            assert not any(key.kid in served for key in current.candidates(now))
            assert gaps[index - 1] >= POLICY.hold_step // 2
        else:
            assert signer.kid in served
            history.append((now, signer.kid, frozenset(k.kid for k in current.published(now, POLICY.retention))))
        now += gap
    for signed_at, kid, _ in history:
        for moment, _, published in history:
            if signed_at - LEAD <= moment <= signed_at + LIFETIME:
                assert kid in published, (signed_at, moment)


def test_config_rejects_a_publication_lead_shorter_than_jwks_caches() -> None:
    with pytest.raises(ValueError, match=r"publishLead \(60s\) must be at least 300s"):
        config.KeyManagement.model_validate({"publishLead": "1m"})
    assert config.KeyManagement.model_validate({"publishLead": "5m"}).publish_lead == 300
