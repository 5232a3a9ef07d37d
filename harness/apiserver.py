"""An HTTP double of the Kubernetes API server, kept only for what the real API server of
tests/controlplane/ cannot play: an API server that is down, failing, slow or answering what a
test chooses, and a request log. Everything fault-free (TokenReview of TokenRequests bound to real
Pods, the Pod metadata read, Secrets and their resourceVersion conflicts, webhook patches, RBAC,
admission, the relying parties, the end-to-end flow) runs against kube-apiserver in
tests/controlplane/.

It serves on 127.0.0.1 (plain HTTP, one thread per connection) from an in-memory object store:

- ``GET /.well-known/openid-configuration`` and ``GET /openid/v1/jwks``: the service-account
  issuer discovery (issuer ``https://kubernetes.default.svc.cluster.local``); the JWKS holds the
  RS256 and ES256 keys ``issue_token`` signs with (``signing_keys``, replaceable to rotate them).
  ``discovery_outage`` set to an HTTP status (e.g. 403, as when the discovery binding is removed)
  makes both answer it.
- ``POST /apis/authentication.k8s.io/v1/tokenreviews`` answers from a table of tokens filled by
  ``issue_token`` (any lifetime, also already expired). ``status.audiences`` is the intersection
  of ``spec.audiences`` (or the API server's own audiences) and the token's audiences; a Pod-bound
  token is refused with the real server's texts when its Pod is gone or has another uid, unless
  ``verify_bindings = False`` (the window in which the real server still accepts it).
- Pods, Secrets, ConfigMaps and MutatingWebhookConfigurations: GET (Pods also as
  ``PartialObjectMetadata``), POST (201, 409 AlreadyExists), PUT (409 Conflict on a stale
  ``resourceVersion``), PATCH (JSON patch, strategic merge patch keyed by ``name``), DELETE;
  errors are ``Status`` objects; every write bumps one global ``resourceVersion``.
- ``watch=true`` GETs of MutatingWebhookConfigurations stream the changes (``events``), from a
  ``resourceVersion`` or from the current object; ``watch_faults`` breaks the next watches (a reset
  connection, a stream that ends at once, a line that is not JSON, a 410 ``ERROR`` event).
- ``set_outage``: ``"refused"`` (the port stops listening), ``"error"`` (500 Status) or
  ``"reset"`` (connections dropped); ``delay`` slows every answer by a chosen time.
- ``requests``/``requests_to``: every request received.

The tests that still need it, one line each with the fault or record it needs:

- tests/runtime/test_token_service.py: outages and a slow API server (503, readiness, 50 ms under
  24 callers), TokenReviews saved by the cache (request log), tokens the real server will not
  issue (expired, 2 s, a review contradicting the audience), the deleted/re-created Pod window.
- tests/runtime/kube/test_kubeapi.py: the bytes the client sends (request log), an expired token,
  the acceptance window, refused/500/reset and a timeout.
- tests/runtime/test_apiserver_double.py: the double's own wire details the tests here rely on.
- tests/runtime/test_account_binding.py: the ServiceAccount read as metadata (request log) and a
  ServiceAccount deleted after the TokenReview (a window the real TokenReview does not show).
- tests/webhook/test_pod_choices.py: the ServiceAccount unreadable (500, the webhook refuses with
  503), one metadata read per Pod and none for a Pod refused first (request log).
- tests/tls/test_tlsmanager.py: no write when nothing drifted, racing replicas' creations, no
  write to a foreign or corrupt Secret (request log), the caBundle watch through broken watches
  (watch faults).
- tests/keys/test_managed_keys.py: an outage keeps the last key set; no write to a corrupt Secret,
  none in provided mode (request log).
- tests/adversarial/test_junk_tokens.py: junk costs no TokenReview and JWKS refetches are bounded
  (request log), discovery refused with 403, the cluster's signing key rotated at run time, a
  250 ms delay under a junk flood.
- tests/adversarial/test_lost_key_secret.py: an API outage (500) at the key handover.
- harness/attacks.py (tests/adversarial/test_headers.py, test_slowloris.py, bench/hostile.py): a runtime
  process under HTTP attack; the API server only has to be up, and off the tier bench/hostile.py
  needs no control plane and the slowloris waits stay out of the tier's budget.

Moved onto the tier: the gcp preset end to end (tests/controlplane/test_gcp_preset.py), the role
bound by the ServiceAccount and the token lifetime at exchange (test_exchange_account_binding.py),
the webhook's live ServiceAccount read (test_injection_cases.py), the deleted key set Secret
(test_deleted_key_secret.py), the trust documents of ``sts-compile trust`` consumed by each
relying party's client (test_trust_documents.py).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime
import http.server
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonpatch
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
ISSUER = "https://kubernetes.default.svc.cluster.local"
_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _public_jwk_json(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return str(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return str(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))


PARTIAL = "PartialObjectMetadata"

# plural -> (apiVersion, kind, namespaced)
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "pods"): ("Pod", True),
    ("v1", "secrets"): ("Secret", True),
    ("v1", "serviceaccounts"): ("ServiceAccount", True),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations"): ("MutatingWebhookConfiguration", False),
}
# Strategic merge patch: lists of objects merged by this key (the real patchMergeKey is "name").
_MERGE_KEYS = {"webhooks": "name", "containers": "name", "initContainers": "name", "volumes": "name", "env": "name"}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[a-z0-9.-]+/v[a-z0-9]+))"
    r"(?:/namespaces/(?P<ns>[a-z0-9-]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?/?$"
)


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request the double received."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    headers: Mapping[str, str]
    """Header names lower-cased."""
    body: bytes


@dataclasses.dataclass
class TokenEntry:
    """What the API server knows about one ServiceAccount token."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires: int
    pod_name: str | None = None
    pod_uid: str | None = None
    service_account_uid: str = ""
    credential_id: str = ""


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` ``Status`` as the API server sends with errors."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = dict(details)
    return body


class _Failure(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status_object(code, reason, message, details)


def _strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """The strategic merge patch subset Kubernetes applies to the types this double stores."""
    if isinstance(patch, dict) and isinstance(target, dict):
        result = dict(target)
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = _strategic_merge(result.get(key), value, key)
        return result
    merge_key = _MERGE_KEYS.get(field)
    if merge_key and isinstance(patch, list) and isinstance(target, list):
        result_list = [copy.deepcopy(item) for item in target]
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise _Failure(400, "BadRequest", f"strategic merge patch: {field} items need {merge_key!r}")
            index = next((i for i, old in enumerate(result_list) if old.get(merge_key) == item[merge_key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del result_list[index]
            elif index is None:
                result_list.append(copy.deepcopy(item))
            else:
                result_list[index] = _strategic_merge(result_list[index], item)
        return result_list
    return copy.deepcopy(patch)


def _accepts_partial(accept: str) -> bool:
    """Whether the first acceptable media type is ``PartialObjectMetadata`` (meta.k8s.io/v1)."""
    for media in accept.split(","):
        params = dict(part.strip().split("=", 1) for part in media.split(";")[1:] if "=" in part)
        if "as" in params:  # only PartialObjectMetadata (meta.k8s.io v1/v1beta1) is served as a conversion
            if params["as"] == PARTIAL and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
                return True
            continue
        if media.split(";")[0].strip() in ("application/json", "*/*", "application/*"):
            return False
    raise _Failure(406, "NotAcceptable", f"only the following media types are accepted: application/json ({accept})")


class APIServer:
    """The double; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        """(apiVersion, plural, namespace or "", name) -> stored object."""
        self.tokens: dict[str, TokenEntry] = {}
        self.requests: list[Recorded] = []
        self.outage: str | None = None
        self.delay = 0.0
        self.verify_bindings = True
        self.api_audiences = API_AUDIENCES
        self._version = itertools.count(1000)
        self._lock = threading.RLock()
        self._changes = threading.Condition(self._lock)
        self.events: list[tuple[tuple[str, str, str, str], str, dict[str, Any]]] = []
        """Every change, in order: (key, ADDED / MODIFIED / DELETED, the object then)."""
        self.watch_faults: list[str] = []
        """One fault for each of the next watches, in order: ``"reset"`` (the connection dropped after
        the headers), ``"end"`` (the stream ends at once), ``"gone"`` (an ``ERROR`` 410 event, as
        for a ``resourceVersion`` no longer in the watch cache), ``"junk"`` (a line that is not JSON)."""
        self.issuer = ISSUER
        self.discovery_outage: int | None = None
        self.signing_keys: dict[str, tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]] = {
            "RS256": (f"rsa-{uuid.uuid4().hex[:12]}", _RSA_KEY),
            "ES256": (f"ec-{uuid.uuid4().hex[:12]}", _EC_KEY),
        }
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> APIServer:
        double = self

        class Handler(_Handler):
            api = double

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> APIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_outage(self, mode: str | None) -> None:
        """``None`` (healthy), ``"refused"``, ``"error"`` (500) or ``"reset"``."""
        if mode not in (None, "refused", "error", "reset"):
            raise ValueError(f"unknown outage mode {mode!r}")
        with self._lock:
            was_refused = self.outage == "refused"
            self.outage = mode
        if mode == "refused" and not was_refused:
            self.stop()
        elif mode != "refused" and was_refused:
            self.start()

    # -- store -----------------------------------------------------------------------------

    def next_resource_version(self) -> str:
        return str(next(self._version))

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``obj`` directly (creating or replacing), filling metadata; returns the stored copy."""
        stored = copy.deepcopy(dict(obj))
        api_version, kind = stored["apiVersion"], stored["kind"]
        plural = next((p for (v, p), (k, _) in RESOURCES.items() if v == api_version and k == kind), None)
        if plural is None:
            raise ValueError(f"the double does not store {api_version} {kind}")
        meta = stored.setdefault("metadata", {})
        namespaced = RESOURCES[(api_version, plural)][1]
        key = (api_version, plural, meta.get("namespace", "") if namespaced else "", meta["name"])
        with self._lock:
            self._fill_metadata(stored, key[2])
            self._store(key, stored)
            return copy.deepcopy(stored)

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.objects.get((api_version, plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def delete(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        with self._lock:
            gone = self.objects.pop((api_version, plural, namespace, name), None)
            if gone is not None:
                self._record((api_version, plural, namespace, name), "DELETED", gone)

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        service_account: str = "default",
    ) -> dict[str, Any]:
        """Store a running Pod; returns it (``metadata.uid`` is generated unless given)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid or str(uuid.uuid4()),
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "serviceAccountName": service_account,
                "containers": [
                    {"name": "app", "image": "registry.example/app:1", "env": [{"name": "PASSWORD", "value": "s3cret"}]}
                ],
            },
            "status": {"phase": "Running"},
        }
        return self.put(pod)

    def add_service_account(
        self, namespace: str, name: str, annotations: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Store (or replace) a ServiceAccount; returns it."""
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "annotations": dict(annotations or {}),
            },
        }
        return self.put(account)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.delete("v1", "pods", namespace, name)

    def add_token(self, token: str, entry: TokenEntry) -> str:
        with self._lock:
            self.tokens[token] = entry
        return token

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod: Mapping[str, Any] | None = None,
        audiences: Sequence[str] = API_AUDIENCES,
        lifetime: int = 3600,
        expires: int | None = None,
        algorithm: str = "RS256",
    ) -> str:
        """A projected ServiceAccount token signed with the double's key, registered in the review table.

        ``pod`` (a stored Pod) binds the token to it; without it the token is unbound.
        """
        now = int(time.time())
        exp = expires if expires is not None else now + lifetime
        pod_name = pod["metadata"]["name"] if pod is not None else None
        pod_uid = pod["metadata"]["uid"] if pod is not None else None
        account = self.get("v1", "serviceaccounts", namespace, service_account)
        if account is None:  # a real API server issues tokens only for ServiceAccounts it holds
            account = self.add_service_account(namespace, service_account)
        sa_uid = account["metadata"]["uid"]
        jti = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "aud": list(audiences),
            "exp": exp,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": jti,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account, "uid": sa_uid}},
        }
        if pod is not None:
            claims["kubernetes.io"]["pod"] = {"name": pod_name, "uid": pod_uid}
        kid, key = self.signing_keys[algorithm]
        token = jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})
        entry = TokenEntry(namespace, service_account, tuple(audiences), exp, pod_name, pod_uid, sa_uid, f"JTI={jti}")
        return self.add_token(token, entry)

    def jwks(self) -> dict[str, Any]:
        """The service-account JWKS (``/openid/v1/jwks``)."""
        keys = []
        for kid, key in self.signing_keys.values():
            jwk: dict[str, Any] = json.loads(_public_jwk_json(key))
            jwk.update({"kid": kid, "use": "sig", "alg": "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"})
            keys.append(jwk)
        return {"keys": keys}

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix) and method in (None, r.method)]

    def _store(self, key: tuple[str, str, str, str], obj: dict[str, Any]) -> None:
        self._record(key, "MODIFIED" if key in self.objects else "ADDED", obj)
        self.objects[key] = obj

    def _record(self, key: tuple[str, str, str, str], kind: str, obj: dict[str, Any]) -> None:
        with self._changes:
            self.events.append((key, kind, copy.deepcopy(obj)))
            self._changes.notify_all()

    def watch(self, path: str, query: Mapping[str, list[str]]) -> Iterator[dict[str, Any] | bytes]:
        """The events of a ``watch=true`` GET of a collection, one ``metadata.name`` field selector:
        with ``resourceVersion`` unset or ``"0"`` the current object (``ADDED``) first, otherwise
        the changes after that version; until ``timeoutSeconds``, or a fault of ``watch_faults``."""
        match = _PATH.match(path)
        if match is None or match["name"] is not None:
            raise _Failure(404, "NotFound", "the server could not find the requested resource")
        api_version, plural = match["core"] or match["group"], match["plural"]
        selector = (query.get("fieldSelector") or [""])[0]
        name = selector.removeprefix("metadata.name=")
        key = (api_version, plural, match["ns"] or "", name)
        version = (query.get("resourceVersion") or [""])[0]
        deadline = time.monotonic() + float((query.get("timeoutSeconds") or ["1800"])[0])
        with self._changes:
            fault = self.watch_faults.pop(0) if self.watch_faults else None
            seen = len(self.events)
            current = copy.deepcopy(self.objects.get(key))
        if fault == "reset":
            raise ConnectionResetError
        if fault == "end":
            return
        if fault == "junk":
            yield b"{not json"
            return
        if fault == "gone":
            yield {"type": "ERROR", "object": status_object(410, "Expired", f"too old resource version: {version}")}
            return
        if version in ("", "0"):
            if current is not None:
                yield {"type": "ADDED", "object": current}
        else:
            versions = [int(obj["metadata"]["resourceVersion"]) for _, _, obj in self.events]
            after = [i for i, changed in enumerate(versions) if changed > int(version)]
            seen = after[0] if after else len(self.events)
        while True:
            with self._changes:
                while seen == len(self.events):
                    left = deadline - time.monotonic()
                    if left <= 0 or self._server is None:
                        return
                    self._changes.wait(min(left, 0.1))
                pending, seen = self.events[seen:], len(self.events)
            for changed, kind, obj in pending:
                if changed == key:
                    yield {"type": kind, "object": obj}

    # -- request handling ----------------------------------------------------------------------

    def _fill_metadata(self, obj: dict[str, Any], namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        if namespace:
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now_rfc3339())
        meta["resourceVersion"] = self.next_resource_version()
        if obj.get("kind") == "Secret":
            data = dict(obj.get("data") or {})
            for name, value in (obj.pop("stringData", None) or {}).items():
                data[name] = base64.b64encode(value.encode()).decode()
            obj["data"] = data
            obj.setdefault("type", "Opaque")

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/version" and method == "GET":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
        if path in ("/.well-known/openid-configuration", "/openid/v1/jwks") and method == "GET":
            if self.discovery_outage is not None:
                code = self.discovery_outage
                raise _Failure(code, "Forbidden" if code == 403 else "InternalError", f"{path}: refused ({code})")
            if path == "/openid/v1/jwks":
                return 200, self.jwks()
            return 200, {
                "issuer": self.issuer,
                "jwks_uri": "https://10.0.0.1:6443/openid/v1/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" and method == "POST":
            return 201, self._token_review(_json_body(body))
        match = _PATH.match(path)
        if match is None:
            raise _Failure(404, "NotFound", "the server could not find the requested resource")
        api_version = match["core"] or match["group"]
        plural, name, namespace = match["plural"], match["name"], match["ns"] or ""
        resource = RESOURCES.get((api_version, plural))
        if resource is None:
            raise _Failure(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced = resource
        if namespaced != bool(namespace):
            raise _Failure(404, "NotFound", "the server could not find the requested resource")
        key = (api_version, plural, namespace, name or "")
        group = api_version.split("/")[0] if "/" in api_version else ""
        details = {"name": name, "kind": plural} | ({"group": group} if group else {})
        with self._lock:
            if name is None:
                if method == "POST":
                    return self._create(api_version, plural, kind, namespace, _json_body(body), details)
                raise _Failure(405, "MethodNotAllowed", f"{method} is not supported on the collection")
            current = self.objects.get(key)
            if current is None:
                raise _Failure(404, "NotFound", f'{plural}{"." + group if group else ""} "{name}" not found', details)
            if method == "GET":
                if _accepts_partial(headers.get("accept", "application/json")):
                    return 200, {
                        "kind": PARTIAL,
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": copy.deepcopy(current["metadata"]),
                    }
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                del self.objects[key]
                self._record(key, "DELETED", current)
                return 200, copy.deepcopy(current)
            if method == "PUT":
                return self._replace(key, kind, current, _json_body(body), details)
            if method == "PATCH":
                return self._patch(key, current, headers.get("content-type", ""), body)
        raise _Failure(405, "MethodNotAllowed", f"{method} is not supported")

    def _create(
        self, api_version: str, plural: str, kind: str, namespace: str, obj: Any, details: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict) or not obj["metadata"].get("name"):
            raise _Failure(422, "Invalid", f"{kind} is invalid: metadata.name: Required value: name is required")
        name = obj["metadata"]["name"]
        details = details | {"name": name}
        if obj.get("metadata", {}).get("resourceVersion"):
            raise _Failure(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        key = (api_version, plural, namespace, name)
        if key in self.objects:
            raise _Failure(409, "AlreadyExists", f'{plural} "{name}" already exists', details)
        stored = copy.deepcopy(obj)
        stored.setdefault("apiVersion", api_version)
        stored.setdefault("kind", kind)
        self._fill_metadata(stored, namespace)
        self._store(key, stored)
        return 201, copy.deepcopy(stored)

    def _replace(
        self, key: tuple[str, str, str, str], kind: str, current: dict[str, Any], obj: Any, details: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise _Failure(400, "BadRequest", "the body is not an object with metadata")
        if obj["metadata"].get("name") != key[3]:
            raise _Failure(400, "BadRequest", "the name of the object does not match the name on the URL")
        wanted = obj["metadata"].get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Failure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[1]} "{key[3]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                details,
            )
        stored = copy.deepcopy(obj)
        stored.setdefault("apiVersion", key[0])
        stored.setdefault("kind", kind)
        for field in ("uid", "creationTimestamp"):
            stored["metadata"][field] = current["metadata"][field]
        self._fill_metadata(stored, key[2])
        self._store(key, stored)
        return 200, copy.deepcopy(stored)

    def _patch(
        self, key: tuple[str, str, str, str], current: dict[str, Any], content_type: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        patch = _json_body(body)
        media = content_type.split(";", maxsplit=1)[0].strip()
        try:
            if media == "application/json-patch+json":
                patched = jsonpatch.apply_patch(current, patch)
            elif media == "application/strategic-merge-patch+json":
                patched = _strategic_merge(current, patch)
            else:
                raise _Failure(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format ({media}) - accepted media types include: "
                    "application/json-patch+json, application/strategic-merge-patch+json",
                )
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise _Failure(422, "Invalid", f"the patch cannot be applied: {exc}") from None
        wanted = patched.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Failure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[1]} "{key[3]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        self._fill_metadata(patched, key[2])
        self._store(key, patched)
        return 200, copy.deepcopy(patched)

    def _token_review(self, review: Any) -> dict[str, Any]:
        if (
            not isinstance(review, dict)
            or review.get("kind") != "TokenReview"
            or not isinstance(review.get("spec"), dict)
        ):
            raise _Failure(400, "BadRequest", "the body is not a TokenReview")
        spec = review["spec"]
        token = spec.get("token")
        wanted = tuple(spec.get("audiences") or ())
        answer = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        if not isinstance(token, str) or not token:
            raise _Failure(422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value")
        error = self._review_error(token, wanted or self.api_audiences)
        if error is not None:
            answer["status"] = {"user": {}, "error": error}
            return answer
        entry = self.tokens[token]
        audiences = [a for a in (wanted or self.api_audiences) if a in entry.audiences]
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [entry.credential_id]}
        if entry.pod_name is not None:
            extra["authentication.kubernetes.io/pod-name"] = [entry.pod_name]
            extra["authentication.kubernetes.io/pod-uid"] = [entry.pod_uid or ""]
        answer["status"] = {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{entry.namespace}:{entry.service_account}",
                "uid": entry.service_account_uid,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{entry.namespace}",
                    "system:authenticated",
                ],
                "extra": extra,
            },
            "audiences": audiences,
        }
        return answer

    def _review_error(self, token: str, wanted: tuple[str, ...]) -> str | None:
        entry = self.tokens.get(token)
        if entry is None:
            return "[invalid bearer token, square/go-jose: compact JWS format must have three parts]"
        if entry.expires <= time.time():
            return "[invalid bearer token, service account token has expired]"
        if not set(wanted) & set(entry.audiences):
            return (
                f"[invalid bearer token, token audiences {json.dumps(list(entry.audiences))} is invalid for the "
                f"target audiences {json.dumps(list(wanted))}, unknown]"
            )
        if entry.pod_name is not None and self.verify_bindings:
            pod = self.objects.get(("v1", "pods", entry.namespace, entry.pod_name))
            if pod is None:
                return (
                    "[invalid bearer token, service account token has been invalidated]"  # kube-apiserver 1.36's text
                )
            if pod["metadata"]["uid"] != entry.pod_uid:
                return (
                    f"[invalid bearer token, pod UID ({pod['metadata']['uid']}) does not match "
                    f"claim ({entry.pod_uid}), unknown]"
                )
        return None


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise _Failure(400, "BadRequest", "the request body is not JSON") from None


class _Handler(http.server.BaseHTTPRequestHandler):
    api: APIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        api = self.api
        with api._lock:
            api.requests.append(Recorded(self.command, parsed.path, urllib.parse.parse_qs(parsed.query), headers, body))
            outage, delay = api.outage, api.delay
        if delay:
            time.sleep(delay)
        if outage in ("refused", "reset"):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command == "GET" and (urllib.parse.parse_qs(parsed.query).get("watch") or [""])[0] == "true":
            self._watch(parsed.path, urllib.parse.parse_qs(parsed.query))
            return
        if outage == "error":
            code, answer = (
                500,
                status_object(500, "InternalError", "Internal error occurred: etcdserver: request timed out"),
            )
        else:
            try:
                code, answer = api.handle(self.command, parsed.path, headers, body)
            except _Failure as failure:
                code, answer = failure.status["code"], failure.status
        data = json.dumps(answer).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeouts in tests)
            self.close_connection = True

    def _watch(self, path: str, query: Mapping[str, list[str]]) -> None:
        """A watch: chunked ``application/json`` lines, one event each (as kube-apiserver streams them)."""
        events = self.api.watch(path, query)
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            for event in events:
                line = (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionResetError:  # the "reset" fault: drop the connection mid-stream
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client went away
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
