"""The rotation schedule: pure functions from (key set, clock, policy) to the next key set.

Rules, for an endpoint whose tokens live ``lifetime`` seconds:

- a key signs during ``[sign_from, sign_until)``; rotation adds its successor ``publish_lead``
  before the successor signs, so relying parties that cache the JWKS for up to ``publish_lead``
  already know it when the first token signed with it arrives;
- a key stays published until ``sign_until + retention`` (``retention`` = token lifetime plus
  clock skew), so every token it signed verifies until it expires; only then is it pruned;
- while a successor is held back (its kid not yet served by an externally hosted JWKS), the
  current key's window is extended in small steps, so the old key keeps signing and the change is
  written to the key set where every replica sees it; a key that is not served never signs (see
  ``KeySet.signing_key``), so a served key whose window ran out during a stall is extended again.

Nothing here reads the clock or the network: the key manager and the tests pass ``now`` in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset

__all__ = ["HOLD_STEP", "Policy", "Step", "next_keyset", "retention"]

HOLD_STEP = 600
"""Seconds by which the current key's window is extended while its successor is held back."""

NewKey = Callable[[int, int, int], keyset.Key]
"""Makes a key from (created, sign_from, sign_until)."""


def retention(endpoint: config.Endpoint) -> int:
    """Seconds a key stays published after it stops signing, for this endpoint's settings."""
    configured = endpoint.issuer.keys.retain_after
    needed = endpoint.token.lifetime + keyset.CLOCK_SKEW
    return needed if configured is None else configured


@dataclasses.dataclass(frozen=True)
class Policy:
    """The settings rotation needs, taken from an endpoint."""

    algorithm: str
    rotation_period: int
    publish_lead: int
    retention: int
    hold_step: int = HOLD_STEP

    @classmethod
    def of(cls, endpoint: config.Endpoint) -> Policy:
        keys = endpoint.issuer.keys
        return cls(
            algorithm=endpoint.token.algorithm,
            rotation_period=keys.rotation_period,
            publish_lead=keys.publish_lead,
            retention=retention(endpoint),
        )


@dataclasses.dataclass(frozen=True)
class Step:
    """The outcome of one scheduling pass: the new key set and what changed, for the log."""

    keyset: keyset.KeySet
    changes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def next_keyset(
    current: keyset.KeySet,
    now: int,
    policy: Policy,
    new_key: NewKey,
    held: Collection[str] = (),
) -> Step:
    """Apply the rotation rules at ``now``; ``held`` names keys not yet served by the issuer."""
    keys = list(current.keys)
    changes: list[str] = []

    kept = [key for key in keys if now < key.sign_until + policy.retention]
    for key in keys:
        if key not in kept:
            changes.append(f"pruned {key.kid} (stopped signing at {key.sign_until}, its tokens have expired)")
    keys = kept

    if not any(key.sign_until > now for key in keys):
        fresh = new_key(now, now, now + policy.rotation_period)
        keys.append(fresh)
        changes.append(f"created {fresh.kid} signing from {now} (no key could sign)")
        return Step(current.with_keys(keys), tuple(changes))

    last = max(keys, key=lambda key: (key.sign_until, key.kid))
    if now >= last.sign_until - policy.publish_lead:
        start = max(last.sign_until, now + policy.publish_lead)
        successor = new_key(now, start, start + policy.rotation_period)
        keys.append(successor)
        changes.append(f"added {successor.kid}: published now, signs from {start}")
        if start > last.sign_until:
            keys[keys.index(last)] = last.replace(sign_until=start)
            changes.append(f"extended {last.kid} to {start} so that signing has no gap")

    if held:
        extended = _hold(keys, now, policy, held)
        if extended is not None:
            keys, note = extended
            changes.append(note)

    return Step(current.with_keys(keys), tuple(changes))


def _hold(
    keys: list[keyset.Key], now: int, policy: Policy, held: Collection[str]
) -> tuple[list[keyset.Key], str] | None:
    """Keep the current key signing while the key due to take over soon is held back."""
    horizon = now + policy.hold_step
    due = [key for key in keys if key.sign_from <= horizon and key.kid in held and key.sign_until > now]
    if not due:
        return None
    # A served key whose window ran out while the manager could not pass (a stall longer than
    # half a hold step) is still published: it takes over again rather than leaving no key the
    # issuer serves to sign with.
    usable = [key for key in keys if key.kid not in held and key.sign_from <= now < key.sign_until + policy.retention]
    if not usable:
        return None
    current = max(usable, key=lambda key: (key.sign_until > now, key.sign_from, key.kid))
    if current.sign_until >= now + policy.hold_step // 2:
        return None  # extend in steps of hold_step, not on every pass
    updated = [current.replace(sign_until=horizon) if key.kid == current.kid else key for key in keys]
    waiting = ", ".join(sorted(key.kid for key in due))
    return updated, f"extended {current.kid} to {horizon}: {waiting} not yet served by the issuer's JWKS"
