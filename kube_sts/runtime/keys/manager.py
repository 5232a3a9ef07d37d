"""Key management: each endpoint's current key set, reloaded, rotated and checked for publication.

A ``KeyProvider`` per endpoint answers the token service (``signing_key()``, ``published()``,
``jwks()``, ``status()``) from an immutable snapshot that ``refresh()`` replaces:

- the key set comes from the mounted Secret file, re-read on every refresh (a content hash
  decides whether it changed; mounted Secrets are swapped on disk, so files, not inotify, are the
  signal); in ``managed`` mode the Secret is read and written through the API server instead,
  created when absent and rotated on schedule (``rotation``), and a write that loses the
  optimistic-concurrency race is dropped in favour of the winner's key set;
- with ``wait_for_publication`` the issuer's public JWKS (``https://<host>/certs``) is fetched
  until it serves every key, and a key it does not serve is never used to sign: an older served
  key keeps signing (rotation extends it in a managed Secret; a key set the runtime cannot write,
  ``provided``, keeps the key that hands over to an unserved successor signing past its window, in
  memory, ``_keep_signing``), and when none is left (a first deployment, before the documents are
  uploaded) token requests are refused until the issuer serves the key;
- a managed key set Secret that disappears while the runtime runs is recreated with the keys the
  runtime holds (and publishes), so the current key keeps signing and issued tokens keep verifying.

A ``KeyManager`` owns the providers of all endpoints and refreshes them on a background thread.
Log lines name keys by ``kid`` only; private key material is never logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import pathlib
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kube_sts.runtime import config, periodic
from kube_sts.runtime.keys import keyset, rotation
from kube_sts.runtime.kube import api as kubeapi

__all__ = [
    "DATA_KEY",
    "KEYS_DIR",
    "ConflictError",
    "KeyManager",
    "KeyProvider",
    "KubeSecrets",
    "SecretStore",
    "Snapshot",
    "fetch_jwks",
]

DATA_KEY = config.KEYSET_FILE
KEYS_DIR = pathlib.Path(config.KEYS_DIR)
PUBLICATION_INTERVAL = 60
"""Seconds between fetches of the issuer's public JWKS while a key is not served yet."""
PUBLICATION_RETRY = 10
"""Seconds between fetches while no served key can sign (every refresh, in practice)."""
REFRESH_INTERVAL = 15.0
EXPIRY_WARNING = 7 * 86400
"""Provided key sets: warn this long before the last key stops signing."""

log = logging.getLogger("kube_sts.keys")

Clock = Callable[[], float]
JwksFetcher = Callable[[str], Mapping[str, Any]]


class ConflictError(Exception):
    """The Secret changed (or appeared) since it was read: another writer won the race."""


class SecretStore(Protocol):
    """The key set Secret in the API server (``keyset.json`` bytes and the resourceVersion).

    Failures: ``ConflictError`` when another writer came first; ``kubeapi.APIError`` or
    ``OSError`` when the store cannot be reached or refuses."""

    def read(self, namespace: str, name: str) -> tuple[bytes, str] | None: ...

    def create(self, namespace: str, name: str, data: bytes) -> str: ...

    def replace(self, namespace: str, name: str, data: bytes, resource_version: str) -> str: ...


class KubeSecrets:
    """``SecretStore`` over the API server: other data keys and labels of the Secret are kept."""

    LABELS: Mapping[str, str] = config.app_labels("keys")

    def __init__(self, api: kubeapi.KubeAPI) -> None:
        self.api = api
        self._read: dict[tuple[str, str], kubeapi.Secret] = {}

    def read(self, namespace: str, name: str) -> tuple[bytes, str] | None:
        try:
            secret = self.api.get_secret(namespace, name)
        except kubeapi.NotFoundError:
            return None
        self._read[(namespace, name)] = secret
        return secret.data.get(DATA_KEY, b""), secret.resource_version

    def create(self, namespace: str, name: str, data: bytes) -> str:
        secret = kubeapi.Secret(name, namespace, {DATA_KEY: data}, "", dict(self.LABELS))
        try:
            created = self.api.create_secret(secret)
        except kubeapi.AlreadyExistsError as exc:
            raise ConflictError(str(exc)) from None
        self._read[(namespace, name)] = created
        return created.resource_version

    def replace(self, namespace: str, name: str, data: bytes, resource_version: str) -> str:
        known = self._read.get((namespace, name))
        base = known or kubeapi.Secret(name, namespace, {}, resource_version, dict(self.LABELS))
        secret = dataclasses.replace(base, data={**base.data, DATA_KEY: data})
        try:
            replaced = self.api.replace_secret(secret, resource_version)
        except (kubeapi.ConflictError, kubeapi.NotFoundError) as exc:
            raise ConflictError(str(exc)) from None
        self._read[(namespace, name)] = replaced
        return replaced.resource_version


def fetch_jwks(url: str) -> Mapping[str, Any]:
    """GET a JWKS over HTTPS with the system trust store."""
    if not url.startswith("https://"):
        raise ValueError(f"refusing to fetch {url!r}: only https issuer URLs are checked")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        document = json.loads(response.read(1 << 20))
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return document


def _served_kids(document: Mapping[str, Any]) -> frozenset[str]:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    return frozenset(entry["kid"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("kid"), str))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a provider serves until the next refresh."""

    keys: keyset.KeySet | None
    served: frozenset[str]
    problem: str | None
    """Why the key set could not be (re)loaded; the last good key set stays in use."""
    loaded: keyset.KeySet | None = None
    """The key set as loaded, when ``keys`` differs from it (a provided set's key kept signing)."""
    kept: tuple[str, int] | None = None
    """(kid, signUntil in the key set) of a key that signs past its window: its successor is unserved."""


def _keeper(keys: keyset.KeySet, now: int, held: frozenset[str], horizon: int) -> keyset.Key | None:
    """The key to keep signing past its window while the key it hands over to is not served.

    It is the newest served key that has signed and whose window reaches the start of a held key
    due by ``horizon`` (the handover ``keys add`` and rotation write); a key retired on its own,
    without handing over, is never brought back. ``None`` when nothing needs keeping.
    """
    due = [key for key in keys.keys if key.kid in held and key.sign_from <= horizon and key.sign_until > now]
    served = [key for key in keys.keys if key.kid not in held and key.sign_from <= now]
    if not due or not served:
        return None
    last = max(served, key=lambda key: (key.sign_from, key.kid))
    if last.sign_until >= horizon:
        return None  # still in its window: the held key simply waits
    if any(last.sign_from < key.sign_from <= last.sign_until for key in due):
        return last
    return None


class KeyProvider:
    """One endpoint's keys, as the token service sees them."""

    def __init__(
        self,
        endpoint: config.Endpoint,
        *,
        namespace: str,
        path: pathlib.Path | None = None,
        secrets: SecretStore | None = None,
        fetcher: JwksFetcher | None = fetch_jwks,
        clock: Clock = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        self.path = path if path is not None else KEYS_DIR / endpoint.name / DATA_KEY
        self.secrets = secrets
        self.fetcher = fetcher
        self.clock = clock
        self.policy = rotation.Policy.of(endpoint)
        self.managed = endpoint.issuer.keys.mode == "managed"
        self._snapshot = Snapshot(None, frozenset(), "the key set has not been loaded yet")
        self._digest: str | None = None
        self._last_fetch: float | None = None
        self._resource_version = ""
        self._fetch_error: str | None = None
        self._read_error: str | None = None
        self._warned: str | None = None
        self._extended: dict[str, int] = {}
        """Provided key sets: kid -> the signUntil a key is kept signing to (see ``_keep_signing``)."""
        self._lock = threading.Lock()

    # -- what the token service asks -------------------------------------------------------

    def now(self) -> int:
        return int(self.clock())

    def held(self, snapshot: Snapshot | None = None) -> frozenset[str]:
        """Keys not yet served by the issuer's public JWKS (empty unless waiting is enabled)."""
        current = snapshot or self._snapshot
        if current.keys is None or not self.endpoint.issuer.keys.wait_for_publication or self.fetcher is None:
            return frozenset()
        return frozenset(key.kid for key in current.keys.keys) - current.served

    def signing_key(self) -> keyset.Key:
        """The key to sign with now; raises ``KeySetError`` with the reason when none can."""
        snapshot = self._snapshot
        if snapshot.keys is None:
            raise keyset.KeySetError(snapshot.problem or "no key set")
        return snapshot.keys.signing_key(self.now(), self.held(snapshot))

    def published(self) -> tuple[keyset.Key, ...]:
        snapshot = self._snapshot
        if snapshot.keys is None:
            return ()
        return snapshot.keys.published(self.now(), self.policy.retention)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.public_jwk() for key in self.published()]}

    def waiting(self, snapshot: Snapshot | None = None) -> tuple[keyset.Key, ...]:
        """Keys that would sign now but are held back, when no served key can sign instead."""
        current = snapshot or self._snapshot
        if current.keys is None:
            return ()
        now, held = self.now(), self.held(current)
        if not held or current.keys.candidates(now, held):
            return ()
        return current.keys.candidates(now)

    def status(self) -> tuple[bool, str]:
        """(ready, reason): ready when a key can sign now, or when the only obstacle is that the
        issuer does not serve the key yet. Every replica shares the key set and the issuer, so
        leaving the Service would not route around it; it would only take away the webhook and
        ``/<endpoint>/issuer-docs``, the documents whose upload ends the wait."""
        problem = self._snapshot.problem
        waiting = self.waiting()
        if waiting:
            kids = ", ".join(key.kid for key in waiting)
            return True, (
                f"endpoint {self.endpoint.name}: signs no token until {self.endpoint.issuer.url}/certs serves {kids};"
                " token requests are refused (503 no_signing_key) until the issuer documents are uploaded"
                " (`sts-compile issuer-docs`)"
            )
        try:
            key = self.signing_key()
        except keyset.KeySetError as exc:
            also = f"; last reload failed: {problem}" if problem and problem != str(exc) else ""
            return False, f"endpoint {self.endpoint.name}: {exc}{also}"
        note = f"; last reload failed: {problem}" if problem else ""
        kept = self._snapshot.kept
        if kept is not None and kept[0] == key.kid:
            held = ", ".join(sorted(self.held()))
            note = (
                f" past its signUntil {kept[1]}: {held} not served by {self.endpoint.issuer.url}/certs yet, "
                f"upload the issuer documents (sts-compile issuer-docs){note}"
            )
        return True, f"endpoint {self.endpoint.name}: signing with {key.kid}{note}{self._expiry_note()}"

    def _expiry_note(self) -> str:
        """A warning when a provided key set is about to run out of keys that can sign."""
        keys = self._snapshot.loaded or self._snapshot.keys  # the file's schedule, not a key kept signing
        if self.managed or keys is None or not keys.keys:
            return ""
        now = self.now()
        last = max(key.sign_until for key in keys.keys)
        if last - now > max(self.policy.publish_lead, EXPIRY_WARNING):
            return ""
        return f"; no key signs after {last} (in {(last - now) // 3600}h): add one with `sts-compile keys add`"

    # -- refreshing --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload, rotate (managed mode) and check publication; never raises for bad input."""
        with self._lock:
            writable = self.managed and self.secrets is not None
            snapshot = self._refresh_managed() if writable else self._refresh_file()
            snapshot = self._check_publication(snapshot)
            if snapshot.keys is not None and writable:
                snapshot = self._rotate(snapshot)
            elif snapshot.keys is not None:
                snapshot = self._keep_signing(snapshot)
            self._snapshot = snapshot
            self._report(snapshot)

    def _adopt(self, data: bytes, source: str) -> Snapshot:
        if not data:
            problem = f"{source} has no {DATA_KEY}; fill it with `sts-compile keys secret` or delete the Secret"
            if problem != self._snapshot.problem:
                log.error("endpoint %s: %s", self.endpoint.name, problem)
            return dataclasses.replace(self._snapshot, problem=problem)
        digest = hashlib.sha256(data).hexdigest()
        current = self._snapshot
        if digest == self._digest and current.keys is not None:
            return dataclasses.replace(current, problem=None)
        try:
            loaded = keyset.loads(data)
        except keyset.KeySetError as exc:
            problem = f"{source}: {exc}"
            if problem != current.problem:
                log.error("endpoint %s: cannot use the key set in %s", self.endpoint.name, problem)
            return dataclasses.replace(current, problem=problem)
        if loaded.endpoint not in (None, self.endpoint.name):
            problem = f"{source}: the key set belongs to endpoint {loaded.endpoint!r}, not {self.endpoint.name!r}"
            if problem != current.problem:
                log.error("endpoint %s: refusing %s", self.endpoint.name, problem)
            return dataclasses.replace(current, problem=problem)
        self._digest = digest
        log.info(
            "endpoint %s: loaded key set %s from %s (kids %s)",
            self.endpoint.name,
            keyset.fingerprint(loaded),
            source,
            ", ".join(key.kid for key in loaded.keys) or "none",
        )
        return Snapshot(loaded, current.served, None)

    def _refresh_file(self) -> Snapshot:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            hint = (
                f"create Secret {self.endpoint.issuer.keypair} with `sts-compile keys secret`"
                if not self.managed
                else "the runtime creates it when it can reach the API server"
            )
            return dataclasses.replace(self._snapshot, problem=f"key set file {self.path} is missing; {hint}")
        except OSError as exc:
            return dataclasses.replace(self._snapshot, problem=f"cannot read {self.path}: {exc.strerror}")
        return self._adopt(data, str(self.path))

    def _secret_source(self) -> str:
        return f"Secret {self.namespace}/{self.endpoint.issuer.keypair}"

    def _refresh_managed(self) -> Snapshot:
        assert self.secrets is not None
        name = self.endpoint.issuer.keypair
        try:
            found = self.secrets.read(self.namespace, name)
            if found is None:
                if self._snapshot.keys is not None and self._snapshot.keys.keys:
                    return self._recreate(name, self._snapshot.keys)
                return self._create(name)
            data, self._resource_version = found
        except ConflictError:
            return self._refresh_managed_after_conflict(name)
        except (kubeapi.APIError, OSError) as exc:  # unreachable or refused: keep going on what we have
            if str(exc) != self._read_error:
                self._read_error = str(exc)
                fallback = "keeping the loaded key set" if self._snapshot.keys is not None else "using the mounted file"
                log.warning("endpoint %s: cannot read %s (%s); %s", self.endpoint.name, name, exc, fallback)
            if self._snapshot.keys is not None:
                return self._snapshot
            return self._refresh_file()
        self._read_error = None
        return self._adopt(data, self._secret_source())

    def _refresh_managed_after_conflict(self, name: str) -> Snapshot:
        """The Secret as another replica wrote it, after that replica won a write race.

        Not ``kubeapi.read_modify_write``: that helper runs the loser's decision again on a fresh
        read until its own write lands. Here the winner's key set is the decision (every replica
        computes the same rotation from the same set and clock), so the loser adopts it and the
        next refresh decides again; a retried write would only race the other replicas again."""
        assert self.secrets is not None
        found = self.secrets.read(self.namespace, name)
        if found is None:
            return dataclasses.replace(self._snapshot, problem=f"{self._secret_source()} vanished while creating it")
        data, self._resource_version = found
        return self._adopt(data, self._secret_source())

    def _create(self, name: str) -> Snapshot:
        assert self.secrets is not None
        now = self.now()
        empty = keyset.KeySet(endpoint=self.endpoint.name)
        step = rotation.next_keyset(empty, now, self.policy, self._new_key)
        data = keyset.dumps(step.keyset)
        try:
            self._resource_version = self.secrets.create(self.namespace, name, data)
        except ConflictError:
            log.info("endpoint %s: another replica created %s first; using its key set", self.endpoint.name, name)
            return self._refresh_managed_after_conflict(name)
        log.info("endpoint %s: created %s (%s)", self.endpoint.name, self._secret_source(), "; ".join(step.changes))
        return self._adopt(data, self._secret_source())

    def _recreate(self, name: str, keys: keyset.KeySet) -> Snapshot:
        """The Secret disappeared (deleted by hand, a namespace clean-up): write back the keys this
        runtime holds. They are the ones the issuer publishes, so the current key keeps signing and
        every token issued keeps verifying; a fresh key would sign tokens no relying party can
        verify until the next upload."""
        assert self.secrets is not None
        data = keyset.dumps(keys)
        try:
            self._resource_version = self.secrets.create(self.namespace, name, data)
        except ConflictError:
            log.info("endpoint %s: another replica recreated %s first; using its key set", self.endpoint.name, name)
            return self._refresh_managed_after_conflict(name)
        log.warning(
            "endpoint %s: %s had disappeared; recreated it with the keys still published (kids %s)",
            self.endpoint.name,
            self._secret_source(),
            ", ".join(key.kid for key in keys.keys),
        )
        return self._adopt(data, self._secret_source())

    def _new_key(self, created: int, sign_from: int, sign_until: int) -> keyset.Key:
        return keyset.generate(self.policy.algorithm, created=created, sign_from=sign_from, sign_until=sign_until)

    def _rotate(self, snapshot: Snapshot) -> Snapshot:
        assert self.secrets is not None and snapshot.keys is not None
        if snapshot.problem is not None:
            return snapshot  # never overwrite a key set we could not read
        step = rotation.next_keyset(snapshot.keys, self.now(), self.policy, self._new_key, self.held(snapshot))
        if not step.changed:
            return snapshot
        name = self.endpoint.issuer.keypair
        data = keyset.dumps(step.keyset)
        try:
            self._resource_version = self.secrets.replace(self.namespace, name, data, self._resource_version)
        except ConflictError:
            log.info("endpoint %s: another replica rotated %s first; reloading it", self.endpoint.name, name)
            return self._check_publication(self._refresh_managed_after_conflict(name))
        except (kubeapi.APIError, OSError) as exc:
            kept = {key.kid for key in snapshot.keys.keys}
            if {key.kid for key in step.keyset.keys} <= kept:
                # Only windows changed (the served key extended while its successor waits) or keys
                # were pruned: nothing new to publish, so this replica goes on with the change in
                # memory rather than refuse tokens; it reaches the Secret with the next write.
                log.warning(
                    "endpoint %s: cannot write %s (%s); applying %s in memory until it can",
                    self.endpoint.name,
                    name,
                    exc,
                    "; ".join(step.changes),
                )
                return Snapshot(step.keyset, snapshot.served, None)
            log.warning("endpoint %s: cannot write %s (%s); will retry", self.endpoint.name, name, exc)
            return snapshot
        for change in step.changes:
            log.info("endpoint %s: %s", self.endpoint.name, change)
        self._digest = hashlib.sha256(data).hexdigest()
        return Snapshot(step.keyset, snapshot.served, None)

    def _keep_signing(self, snapshot: Snapshot) -> Snapshot:
        """A key set the runtime cannot write (``provided``): while the successor is not served,
        the key it takes over from keeps signing past its ``signUntil``, extended in memory in
        steps of ``hold_step``, and stays in the JWKS until its tokens expire (as managed mode
        writes into the Secret). The schedule in the file decides which key that is, so every
        replica and a restarted one agree."""
        loaded = snapshot.loaded or snapshot.keys
        assert loaded is not None
        now = self.now()
        retention = self.policy.retention
        self._extended = {
            kid: until
            for kid, until in self._extended.items()
            if loaded.get(kid) is not None and now < until + retention
        }
        keeper = _keeper(loaded, now, self.held(snapshot), now + self.policy.hold_step)
        if keeper is not None:
            self._extended[keeper.kid] = max(self._extended.get(keeper.kid, 0), now + self.policy.hold_step)
        if not self._extended:
            return dataclasses.replace(snapshot, keys=loaded, loaded=None, kept=None)
        keys = loaded.with_keys(
            key.replace(sign_until=max(key.sign_until, self._extended.get(key.kid, 0))) for key in loaded.keys
        )
        kept = (keeper.kid, keeper.sign_until) if keeper is not None and keeper.sign_until <= now else None
        return dataclasses.replace(snapshot, keys=keys, loaded=loaded, kept=kept)

    def _check_publication(self, snapshot: Snapshot) -> Snapshot:
        if snapshot.keys is None or self.fetcher is None or not self.endpoint.issuer.keys.wait_for_publication:
            return snapshot
        missing = self.held(snapshot)
        if not missing:
            return snapshot
        now = self.clock()
        interval = PUBLICATION_RETRY if self.waiting(snapshot) else PUBLICATION_INTERVAL
        if self._last_fetch is not None and now - self._last_fetch < interval:
            return snapshot
        self._last_fetch = now
        url = f"{self.endpoint.issuer.url}/certs"
        try:
            served = _served_kids(self.fetcher(url))
        except (OSError, ValueError, http.client.HTTPException) as exc:  # the fetch or the JWKS failed: keys stay held
            if str(exc) != self._fetch_error:
                log.warning("endpoint %s: cannot fetch %s (%s); unserved keys stay held", self.endpoint.name, url, exc)
                self._fetch_error = str(exc)
            return snapshot
        self._fetch_error = None
        known = frozenset(key.kid for key in snapshot.keys.keys)
        return dataclasses.replace(snapshot, served=snapshot.served | (served & known))

    def _report(self, snapshot: Snapshot) -> None:
        ready, reason = self.status()
        held = self.held(snapshot)
        message = reason
        if ready and held and not self.waiting(snapshot):
            key = self.signing_key()
            url = f"{self.endpoint.issuer.url}/certs"
            if key.kid in held:
                message = f"{reason}, which {url} does not serve yet: upload the issuer documents"
            else:
                message = f"{reason}; {', '.join(sorted(held))} held until {url} serves it"
        if message != self._warned:
            quiet = ready and not held and self._snapshot.problem is None and not self._expiry_note()
            (log.info if quiet else log.warning)("%s", message)
            self._warned = message


class KeyManager:
    """The providers of all endpoints, refreshed on one background thread."""

    def __init__(self, providers: Mapping[str, KeyProvider], interval: float = REFRESH_INTERVAL) -> None:
        self.providers = dict(providers)
        self.interval = interval
        self._runner = periodic.Periodic("kube-sts-keys", self.refresh, interval)

    @classmethod
    def from_config(
        cls,
        runtime: config.RuntimeConfig,
        *,
        keys_dir: pathlib.Path = KEYS_DIR,
        secrets: SecretStore | None = None,
        fetcher: JwksFetcher | None = fetch_jwks,
        clock: Clock = time.time,
        interval: float = REFRESH_INTERVAL,
    ) -> KeyManager:
        providers = {
            endpoint.name: KeyProvider(
                endpoint,
                namespace=runtime.namespace,
                path=keys_dir / endpoint.name / DATA_KEY,
                secrets=secrets,
                fetcher=fetcher,
                clock=clock,
            )
            for endpoint in runtime.endpoints
        }
        return cls(providers, interval)

    def provider(self, endpoint: str) -> KeyProvider:
        return self.providers[endpoint]

    def refresh(self) -> None:
        for provider in self.providers.values():
            try:
                provider.refresh()
            except Exception:  # one endpoint's failure must not stop the others
                # Broad on purpose: refresh() handles an unreadable file or Secret and a bad key set
                # itself; what reaches here (the API server failing the read after a lost write
                # race, or an unforeseen error) must not stop the other endpoints' refresh, and a
                # list of types would let exactly the unforeseen ones through.
                log.exception("endpoint %s: key refresh failed", provider.endpoint.name)

    def status(self) -> tuple[bool, tuple[str, ...]]:
        """(ready, reasons): ready when every endpoint has a key that can sign now."""
        results = [provider.status() for provider in self.providers.values()]
        return all(ready for ready, _ in results), tuple(reason for _, reason in results)

    def start(self) -> None:
        """Refresh once now, then every ``interval`` seconds until ``stop()``."""
        self._runner.start()

    def stop(self) -> None:
        self._runner.stop()
