"""The TLS manager: keeps the serving certificate, the CA bundle and the webhooks' caBundle current.

Both modes (``config.tls.mode``):

- ``ServingCertificate`` owns the ``ssl.SSLContext`` the server listens with. That context only
  selects, in its SNI callback (called for every handshake, with or without a server name), the
  newest loaded context; a reload builds and checks a complete new context and swaps one
  reference, so handshakes in flight and open connections keep the context they started with.
  It reloads ``tls.crt``, ``tls.key`` and ``ca.crt`` from the mounted directory when their content
  changes, and ``ca_bundle()`` returns the ``ca.crt`` that belongs to the certificate served.
- Readiness is false, with the reason, while no certificate is loaded, while it is outside its
  validity, does not cover ``tls.dnsNames`` or does not chain to ``ca.crt``.

``runtime`` mode adds ``SecretManager``: it creates the TLS Secret when absent (``AlreadyExists``:
another replica won, load its Secret), renews it on the schedule of ``certificates.decide``
(``replace`` with the ``resourceVersion`` read, so of replicas racing exactly one write wins and
the others reload), patches every configured MutatingWebhookConfiguration whose ``caBundle``
drifted (strategic merge by webhook name, guarded by ``resourceVersion``), and hands the new
material to ``ServingCertificate`` at once, without waiting for the kubelet to refresh the
volume. A Secret without our label, or with data that does not parse, is reported and never
written.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import logging
import os
import pathlib
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import exceptions, x509

from kube_sts.runtime import config, periodic
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tls import certificates

__all__ = [
    "TLS_DIR",
    "Material",
    "SecretManager",
    "ServingCertificate",
    "TLSManager",
    "TLSSecretError",
]

log = logging.getLogger("kube_sts.tls")

TLS_DIR = pathlib.Path(config.TLS_DIR)
FILES = config.TLS_FILES
SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 (a Secret type, not a password)
LABELS: Mapping[str, str] = {**config.app_labels("tls"), certificates.LABEL: certificates.LABEL_VALUE}
MAX_ATTEMPTS = 5
FILE_INTERVAL = 10.0
RESYNC_INTERVAL = 300.0
RETRY_INTERVAL = 15.0
WATCH_RETRY = 1.0
"""First pause after a failed watch round; it doubles with each failure in a row up to ``WATCH_RETRY_MAX``."""
WATCH_RETRY_MAX = 30.0

Clock = Callable[[], float]


def _load_chain(context: ssl.SSLContext, certificate: bytes, private_key: bytes) -> None:
    """``load_cert_chain`` from memory: anonymous memory files on Linux, a private directory elsewhere."""
    if hasattr(os, "memfd_create"):
        descriptors = [os.memfd_create("kube-sts-tls", os.MFD_CLOEXEC) for _ in range(2)]
        try:
            for descriptor, data in zip(descriptors, (certificate, private_key), strict=True):
                os.write(descriptor, data)
            context.load_cert_chain(f"/proc/self/fd/{descriptors[0]}", f"/proc/self/fd/{descriptors[1]}")
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="kube-sts-tls-") as scratch:  # mode 0700
        cert_path, key_path = pathlib.Path(scratch, "tls.crt"), pathlib.Path(scratch, "tls.key")
        cert_path.write_bytes(certificate)
        key_path.write_bytes(private_key)
        context.load_cert_chain(cert_path, key_path)


class TLSSecretError(Exception):
    """The TLS Secret cannot be used or written; the message says what to do."""


class _WatchEndedError(Exception):
    """A watch round ended otherwise than by the API server's timeout."""


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _base_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _covers(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _chains(leaf: x509.Certificate, chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> bool:
    """True when ``leaf`` is signed by a root, directly or through certificates of ``chain``.

    Signatures only, on purpose: ``_check`` reports the validity window and the names first, each
    with its own message, and this answers the one remaining question. A
    ``cryptography.x509.verification`` server verifier (PolicyBuilder and Store) answers all of
    them at once with one error, and also applies the CA/B web profile to certificates the
    operator provides (basic constraints and key usage on every CA, the extended key usage of the
    leaf, an unexpired CA in ca.crt): certificates the runtime serves today would be refused."""
    current = leaf
    for _ in range(len(chain) + 1):
        for candidate in (*roots, *chain):
            if candidate.subject != current.issuer or candidate is current:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, exceptions.InvalidSignature):
                continue
            if any(candidate is root for root in roots):
                return True
            current = candidate
            break
        else:
            return False
    return False


@dataclasses.dataclass(frozen=True)
class Material:
    """PEM bytes of a serving certificate (with chain), its key and the CA bundle."""

    certificate: bytes
    private_key: bytes
    ca_bundle: bytes

    def digest(self) -> str:
        return hashlib.sha256(b"\0".join((self.certificate, self.private_key, self.ca_bundle))).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Loaded:
    material: Material
    context: ssl.SSLContext
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    source: str

    def order(self) -> tuple[datetime.datetime, datetime.datetime]:
        """Which of two loads is newer: issuance of the leaf, then of the newest CA."""
        return self.leaf.not_valid_before_utc, max(r.not_valid_before_utc for r in self.roots)


class ServingCertificate:
    """The certificate the server presents, reloadable without a restart."""

    def __init__(self, directory: pathlib.Path | None, dns_names: Sequence[str], clock: Clock = time.time) -> None:
        self.directory = directory
        self.dns_names = tuple(dns_names)
        self.clock = clock
        self._lock = threading.Lock()
        self._current: _Loaded | None = None
        self._floor: tuple[datetime.datetime, datetime.datetime] | None = None
        self._files_digest: str | None = None
        self._problem = "no certificate loaded yet"
        self._reported = ""
        self._server_context = _base_context()
        self._server_context.sni_callback = self._select

    # -- the server's context ----------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The context to listen with; it hands every handshake the newest loaded certificate."""
        return self._server_context

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        current = self._current
        if current is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        connection.context = current.context
        return None

    # -- loading -------------------------------------------------------------------------------

    def _build(self, material: Material, source: str) -> _Loaded:
        try:
            leaf, *chain = certificates.load_pem_certificates(material.certificate, f"{source} tls.crt")
            roots = certificates.load_pem_certificates(material.ca_bundle, f"{source} ca.crt")
        except certificates.CertificateError as exc:
            raise TLSSecretError(str(exc)) from None
        context = _base_context()
        try:
            _load_chain(context, material.certificate, material.private_key)
        except ssl.SSLError as exc:
            raise TLSSecretError(f"{source}: tls.key does not fit tls.crt or is unreadable ({exc.reason})") from None
        return _Loaded(material, context, leaf, tuple(chain), roots, source)

    def load(self, material: Material, source: str, *, authoritative: bool = False) -> bool:
        """Serve ``material`` from now on; True when it replaced the current certificate.

        ``authoritative`` material (from the Secret just read or written) also sets a floor: files
        older than it, still waiting for the kubelet's refresh, are not loaded over it.
        """
        loaded = self._build(material, source)
        with self._lock:
            current = self._current
            if current is not None and current.material == material:
                if authoritative:
                    self._floor = loaded.order()
                return False
            if not authoritative and self._floor is not None and loaded.order() < self._floor:
                log.info("TLS: %s holds an older certificate than the Secret; keeping the newer one", source)
                return False
            if authoritative:
                self._floor = loaded.order()
            self._current = loaded
        log.info(
            "TLS: serving certificate from %s, serial %x, valid until %s",
            source,
            loaded.leaf.serial_number,
            f"{loaded.leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
        self.status()
        return True

    def poll_files(self) -> bool:
        """Load the mounted files when their content changed; True when the certificate changed."""
        if self.directory is None:
            return False
        try:
            cert, key, ca = (pathlib.Path(self.directory, name).read_bytes() for name in FILES)
        except FileNotFoundError as exc:
            if self._current is None:
                self._problem = f"{exc.filename} does not exist (yet)"
            return False
        except OSError as exc:
            if self._current is None:
                self._problem = f"cannot read {exc.filename}: {exc.strerror}"
            return False
        material = Material(cert, key, ca)
        digest = material.digest()
        if digest == self._files_digest:
            return False
        self._files_digest = digest
        try:
            return self.load(material, str(self.directory))
        except TLSSecretError as exc:
            log.error("TLS: cannot load the certificate in %s: %s", self.directory, exc)
            if self._current is None:
                self._problem = str(exc)
            return False

    # -- state ----------------------------------------------------------------------------------

    def ca_bundle(self) -> bytes | None:
        """PEM of the CAs that sign the certificate served (what sidecars and webhooks must trust)."""
        current = self._current
        return current.material.ca_bundle if current is not None else None

    def certificate(self) -> x509.Certificate | None:
        current = self._current
        return current.leaf if current is not None else None

    def status(self) -> tuple[bool, str]:
        """(ready, why): ready while a valid certificate for every DNS name is served."""
        problem = self._check()
        if problem != self._reported:
            if problem:
                log.warning("TLS not ready: %s", problem)
            else:
                log.info("TLS ready")
            self._reported = problem
        return (not problem, problem or "serving a valid certificate")

    def _check(self) -> str:
        current = self._current
        if current is None:
            return self._problem
        leaf, now = current.leaf, _utc(self.clock())
        if now < leaf.not_valid_before_utc:
            start = f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
            return f"the certificate from {current.source} is valid only from {start}"
        if now >= leaf.not_valid_after_utc:
            return f"the certificate from {current.source} expired at {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        names = certificates.dns_names(leaf)
        missing = [n for n in self.dns_names if not any(_covers(p, n) for p in names)]
        if missing:
            return f"the certificate from {current.source} does not cover {', '.join(missing)}"
        if not _chains(leaf, current.chain, current.roots):
            return f"the certificate from {current.source} is not signed by a CA in its ca.crt"
        return ""


class SecretManager:
    """Runtime mode: the TLS Secret and the webhooks' caBundle, created and renewed by the runtime."""

    def __init__(
        self,
        runtime: config.RuntimeConfig,
        kube: kubeapi.KubeAPI,
        serving: ServingCertificate,
        *,
        clock: Clock = time.time,
        policy: certificates.Policy | None = None,
    ) -> None:
        self.namespace = runtime.namespace
        self.name = runtime.tls.secret_name
        self.dns_names = runtime.tls.dns_names
        self.webhooks = runtime.webhook_configurations
        self.kube = kube
        self.serving = serving
        self.clock = clock
        self.policy = policy if policy is not None else certificates.Policy()
        self.bundle: certificates.Bundle | None = None
        self.problem = ""
        """A lasting problem (foreign or corrupt Secret); empty when none."""
        self.webhook_problems: dict[str, str] = {}
        self.watch_problems: dict[str, str] = {}
        """Why the watch of a configuration fails, while it does (the periodic resync then runs
        every ``RETRY_INTERVAL``)."""
        self.watch_seconds = runtime.tls.watch_seconds
        self.watch_failures: dict[str, int] = {name: 0 for name in self.webhooks}
        """Failed watch rounds in a row, by configuration (0 while its watch runs)."""
        self.watch_rounds: dict[str, int] = {name: 0 for name in self.webhooks}
        """Watch rounds started, by configuration (the first, then one per renewal or retry)."""

    def reconcile(self) -> certificates.Bundle:
        """One pass: create or renew the Secret, serve it, align every webhook's caBundle."""
        try:
            bundle = self._settle_secret()
        except TLSSecretError as exc:
            if str(exc) != self.problem:
                log.error("TLS Secret %s/%s: %s", self.namespace, self.name, exc)
            self.problem = str(exc)
            raise
        self.problem = ""
        self.bundle = bundle
        data = certificates.to_secret_data(bundle)
        self.serving.load(
            Material(data["tls.crt"], data["tls.key"], data["ca.crt"]),
            f"Secret {self.namespace}/{self.name}",
            authoritative=True,
        )
        for name in self.webhooks:
            self._align_webhook(name, bundle.ca_pem())
        return bundle

    def next_run(self) -> float:
        """Epoch seconds of the next decision point of the current bundle."""
        if self.bundle is None:
            return self.clock()
        return certificates.next_change(self.bundle, _utc(self.clock()), self.policy).timestamp()

    def _own(self, secret: kubeapi.Secret) -> certificates.Bundle:
        where = f"Secret {self.namespace}/{self.name}"
        if secret.labels.get(certificates.LABEL) != certificates.LABEL_VALUE:
            raise TLSSecretError(
                f"{where} exists but was not created by kube-sts (no label "
                f"{certificates.LABEL}={certificates.LABEL_VALUE}); it is left untouched. Delete it, "
                "or set webhook.certificates.secretName to a free name, or use cert-manager mode"
            )
        try:
            return certificates.from_secret_data(dict(secret.data))
        except certificates.CertificateError as exc:
            raise TLSSecretError(
                f"{where} is corrupt: {exc}. It is left untouched; delete it and the runtime creates a new CA "
                "and certificate"
            ) from None

    def _secret(self, bundle: certificates.Bundle, labels: Mapping[str, str]) -> kubeapi.Secret:
        return kubeapi.Secret(
            self.name,
            self.namespace,
            certificates.to_secret_data(bundle),
            "",
            {**labels, **LABELS},
            SECRET_TYPE,
        )

    def _settle_secret(self) -> certificates.Bundle:
        try:
            return kubeapi.read_modify_write(self._settle_once, MAX_ATTEMPTS)
        except kubeapi.ChangedError:
            raise TLSSecretError(
                f"no consistent read-and-write after {MAX_ATTEMPTS} attempts; retrying later"
            ) from None

    def _settle_once(self) -> certificates.Bundle:
        now = _utc(self.clock())
        try:
            secret = self.kube.get_secret(self.namespace, self.name)
        except kubeapi.NotFoundError:
            bundle = certificates.create(self.dns_names, now, self.policy)
            try:
                self.kube.create_secret(self._secret(bundle, {}))
            except kubeapi.AlreadyExistsError:
                log.info("TLS Secret %s/%s was created by another replica; loading it", self.namespace, self.name)
                raise
            log.info("TLS Secret %s/%s created with a new CA", self.namespace, self.name)
            return bundle
        bundle = self._own(secret)
        decision = certificates.decide(bundle, self.dns_names, now, self.policy)
        if not decision:
            return bundle
        renewed = certificates.apply(bundle, decision, self.dns_names, now, self.policy)
        try:
            self.kube.replace_secret(self._secret(renewed, secret.labels), secret.resource_version)
        except (kubeapi.ConflictError, kubeapi.NotFoundError) as exc:
            log.info("TLS Secret %s/%s changed meanwhile; reading it again", self.namespace, self.name)
            raise kubeapi.ConflictError(exc.status, exc.reason, exc.message) from None
        log.info("TLS Secret %s/%s renewed: %s", self.namespace, self.name, "; ".join(decision.reasons))
        return renewed

    def _align_webhook(self, name: str, ca_pem: bytes) -> None:
        wanted = base64.b64encode(ca_pem).decode("ascii")

        def attempt() -> list[str]:
            current = self.kube.get_mutating_webhook(name)
            webhooks: list[dict[str, Any]] = list(current.get("webhooks") or [])
            drifted = [w["name"] for w in webhooks if (w.get("clientConfig") or {}).get("caBundle") != wanted]
            if drifted:
                patch = {
                    "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                    "webhooks": [{"name": w, "clientConfig": {"caBundle": wanted}} for w in drifted],
                }
                self.kube.patch_mutating_webhook(name, patch, "strategic")
            return drifted

        try:
            drifted = kubeapi.read_modify_write(attempt, MAX_ATTEMPTS)
        except kubeapi.ChangedError as exc:
            self._webhook_problem(name, str(exc))
            return
        except kubeapi.NotFoundError:
            self._webhook_problem(name, "does not exist (yet); its caBundle is set once it is applied")
            return
        except kubeapi.APIError as exc:
            self._webhook_problem(name, f"cannot be updated: {exc}")
            return
        if drifted:
            log.info("MutatingWebhookConfiguration %s: caBundle set for %s", name, ", ".join(drifted))
        self._webhook_ok(name)

    def watch_webhook(self, name: str, stopped: threading.Event) -> None:
        """Until ``stopped``: keep a watch on the configuration ``name`` and restore its caBundle as
        soon as a change (a GitOps replace or sync that wipes it) leaves it differing from the served CA.

        Each round reads the configuration, repairs it, and watches the changes after the
        ``resourceVersion`` read, so nothing changed between two watches is missed; the API server
        ends the watch after ``tls.watchSeconds`` and the next round reads again. An ``ERROR`` event
        (410 Gone: that version left the server's watch cache; 504: the cache is behind), a broken
        or ended stream, or any other failure ends the round: it is logged (once per distinct
        failure), counted in ``watch_failures`` and retried after a pause that doubles up to
        ``WATCH_RETRY_MAX``. After a 410 the next watch starts from the state the server holds
        (``resourceVersion=0``), still after a fresh read. The thread only ends with ``stopped``."""
        from_cache = False
        while not stopped.is_set():
            self.watch_rounds[name] = self.watch_rounds.get(name, 0) + 1
            started = time.monotonic()
            try:
                read = self._read_and_repair(name)
                version, from_cache = ("0" if from_cache else read), False
                for event in self.kube.watch_mutating_webhook(name, self.watch_seconds, version):
                    if stopped.is_set():
                        return
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        from_cache = obj.get("code") == 410
                        raise _WatchEndedError(f"ERROR {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                    self._watch_ok(name)
                    if kind in {"ADDED", "MODIFIED"}:
                        self._repair(name, obj)
                lasted = time.monotonic() - started
                if lasted < self.watch_seconds / 2:
                    raise _WatchEndedError(f"the API server ended the watch after {lasted:.1f} s")
                self._watch_ok(name)
            except Exception as exc:  # any failure: the watch is resumed, never abandoned
                if stopped.is_set():
                    return
                failures = self.watch_failures.get(name, 0) + 1
                self.watch_failures[name] = failures
                pause = min(WATCH_RETRY * 2 ** (failures - 1), WATCH_RETRY_MAX)
                problem = f"cannot be watched ({type(exc).__name__}: {exc})"
                if self.watch_problems.get(name) != problem:
                    log.warning("MutatingWebhookConfiguration %s %s; watching again in %.3g s", name, problem, pause)
                self.watch_problems[name] = problem
                stopped.wait(pause)

    def _read_and_repair(self, name: str) -> str:
        """Read the configuration, restore its caBundle if it drifted; the ``resourceVersion`` read."""
        current = self.kube.get_mutating_webhook(name)
        self._repair(name, current)
        version: str = current["metadata"]["resourceVersion"]
        return version

    def _repair(self, name: str, obj: Mapping[str, Any]) -> None:
        bundle = self.bundle
        if bundle is None:
            return
        wanted = base64.b64encode(bundle.ca_pem()).decode("ascii")
        hooks = obj.get("webhooks") or []
        if any((h.get("clientConfig") or {}).get("caBundle") != wanted for h in hooks):
            self._align_webhook(name, bundle.ca_pem())

    def _watch_ok(self, name: str) -> None:
        if self.watch_problems.pop(name, None) is not None:
            log.info("MutatingWebhookConfiguration %s is watched again", name)
        self.watch_failures[name] = 0

    def _webhook_problem(self, name: str, problem: str) -> None:
        if self.webhook_problems.get(name) != problem:
            log.warning("MutatingWebhookConfiguration %s %s", name, problem)
        self.webhook_problems[name] = problem

    def _webhook_ok(self, name: str) -> None:
        self.webhook_problems.pop(name, None)


class TLSManager:
    """The server's TLS, either mode: start/stop, readiness, the listening context, the CA bundle."""

    def __init__(
        self,
        runtime: config.RuntimeConfig,
        kube: kubeapi.KubeAPI | None,
        *,
        directory: pathlib.Path | None = TLS_DIR,
        clock: Clock = time.time,
        policy: certificates.Policy | None = None,
        file_interval: float = FILE_INTERVAL,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.serving = ServingCertificate(directory, runtime.tls.dns_names, clock)
        self.secrets: SecretManager | None = None
        if runtime.tls.mode == "runtime":
            if kube is None:
                raise ValueError("runtime TLS mode needs Kubernetes API access")
            self.secrets = SecretManager(runtime, kube, self.serving, clock=clock, policy=policy)
        self.clock = clock
        self.file_interval = file_interval
        self.resync_interval = resync_interval
        self._runner = periodic.Periodic("kube-sts-tls", self.tick, file_interval)
        self._due = 0.0
        self._watching = threading.Event()
        self._watchers: list[threading.Thread] = []

    def server_context(self) -> ssl.SSLContext:
        return self.serving.server_context()

    def ca_bundle(self) -> bytes | None:
        """PEM of the CA bundle that verifies the served certificate (None until one is loaded)."""
        return self.serving.ca_bundle()

    def status(self) -> tuple[bool, str]:
        ready, reason = self.serving.status()
        if self.secrets is not None and self.secrets.problem:
            return False, f"TLS Secret: {self.secrets.problem}"
        return ready, reason

    def tick(self) -> None:
        """One round: reload changed files; in runtime mode reconcile when due."""
        self.serving.poll_files()
        if self.secrets is None or self.clock() < self._due:
            return
        try:
            self.secrets.reconcile()
        except (TLSSecretError, kubeapi.APIError) as exc:
            if isinstance(exc, kubeapi.APIError):
                log.warning("TLS Secret %s/%s: %s; retrying", self.secrets.namespace, self.secrets.name, exc)
            self._due = self.clock() + RETRY_INTERVAL
            return
        failing = self.secrets.webhook_problems or self.secrets.watch_problems
        webhook_retry = RETRY_INTERVAL if failing else self.resync_interval
        self._due = min(self.secrets.next_run(), self.clock() + webhook_retry)

    def start(self) -> None:
        """A first round now (so a certificate is served when possible), then one per interval;
        in runtime mode a watch on each webhook configuration restores a wiped caBundle at once."""
        self._runner.start()
        if self.secrets is not None and not self._watchers:
            self._watching.clear()
            for name in self.secrets.webhooks:
                thread = threading.Thread(
                    target=self.secrets.watch_webhook,
                    args=(name, self._watching),
                    name=f"kube-sts-watch-{name}",
                    daemon=True,
                )
                thread.start()
                self._watchers.append(thread)

    def stop(self) -> None:
        self._runner.stop()
        self._watching.set()  # a watcher blocked in its watch ends with it (daemon threads)
        self._watchers.clear()
