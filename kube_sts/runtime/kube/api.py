"""The runtime's access to the Kubernetes API server, over the official ``kubernetes`` client.

Requests go through ``ApiClient.call_api`` and exchange plain JSON, so the runtime sees exactly
the wire format (no model round trip that could drop fields) and chooses its own ``Accept``
header (``PartialObjectMetadata`` for Pods). Calls are synchronous; the token service runs them
in a thread pool. Failures are typed:

- ``NotFoundError`` (404), ``AlreadyExistsError`` (409 on create), ``ConflictError`` (409 on a stale
  ``resourceVersion``): the answer of a reachable API server;
- ``UnavailableError``: connection refused or reset, timeouts, 429 and 5xx: try again later;
- ``APIError``: any other refusal (400, 401, 403, 422, ...).

Configuration: ``KubeAPI.from_environment()`` uses the in-cluster ServiceAccount (token file
re-read by the client) and falls back to ``~/.kube/config`` for development;
``KubeAPI.for_host(url)`` talks to an explicit host (tests).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import kubernetes.client
import kubernetes.config
import urllib3

__all__ = [
    "PARTIAL_METADATA",
    "APIError",
    "AlreadyExistsError",
    "ChangedError",
    "ConflictError",
    "KubeAPI",
    "NotFoundError",
    "ObjectMeta",
    "Review",
    "Secret",
    "UnavailableError",
    "read_modify_write",
]

T = TypeVar("T")

PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"
_WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
_PATCH_TYPES = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
DEFAULT_TIMEOUT = 5.0


class APIError(Exception):
    """The API server refused the request; ``status`` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(APIError):
    """404: the object does not exist."""


class AlreadyExistsError(APIError):
    """409 on create: an object of that name exists."""


class ConflictError(APIError):
    """409 on update: the object changed since the ``resourceVersion`` that was sent."""


class UnavailableError(APIError):
    """The API server could not be reached, timed out, or answered 429/5xx."""


class ChangedError(Exception):
    """Every attempt of ``read_modify_write`` met a concurrent writer."""


def read_modify_write(attempt: Callable[[], T], attempts: int = 5) -> T:
    """Run ``attempt`` (read an object, decide, write it back) until it completes.

    ``attempt`` raises ``ConflictError`` (or ``AlreadyExistsError``) when another writer came
    between its read and its write; it then runs again on a fresh read, at most ``attempts``
    times, after which ``ChangedError`` says so. Every other error is the caller's.
    """
    for _ in range(attempts):
        try:
            return attempt()
        except (ConflictError, AlreadyExistsError):
            continue
    raise ChangedError(f"kept changing during {attempts} attempts")


@dataclasses.dataclass(frozen=True)
class Review:
    """The ``status`` of a TokenReview."""

    authenticated: bool
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    audiences: tuple[str, ...] = ()
    error: str = ""

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) when the user is a ServiceAccount."""
        if not self.username.startswith(_SA_PREFIX):
            return None
        namespace, _, name = self.username[len(_SA_PREFIX) :].partition(":")
        return (namespace, name) if namespace and name and ":" not in name else None

    def _single(self, key: str) -> str | None:
        values = self.extra.get(key, ())
        return values[0] if len(values) == 1 and values[0] else None

    @property
    def pod_name(self) -> str | None:
        return self._single(POD_NAME)

    @property
    def pod_uid(self) -> str | None:
        return self._single(POD_UID)


@dataclasses.dataclass(frozen=True)
class ObjectMeta:
    """The metadata of an object (what a ``PartialObjectMetadata`` GET returns)."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    deletion_timestamp: str | None

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> ObjectMeta:
        return cls(
            name=str(metadata.get("name", "")),
            namespace=str(metadata.get("namespace", "")),
            uid=str(metadata.get("uid", "")),
            resource_version=str(metadata.get("resourceVersion", "")),
            labels=dict(metadata.get("labels") or {}),
            annotations=dict(metadata.get("annotations") or {}),
            deletion_timestamp=metadata.get("deletionTimestamp"),
        )


@dataclasses.dataclass(frozen=True)
class Secret:
    """A Secret's decoded ``data`` and its ``resourceVersion``."""

    name: str
    namespace: str
    data: Mapping[str, bytes]
    resource_version: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    type: str = "Opaque"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Secret:
        meta = ObjectMeta.of(obj.get("metadata") or {})
        data = {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
        return cls(meta.name, meta.namespace, data, meta.resource_version, meta.labels, str(obj.get("type", "Opaque")))

    def to_object(self, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": self.type,
            "data": {key: base64.b64encode(value).decode("ascii") for key, value in sorted(self.data.items())},
        }


def _watch_event(line: bytes, path: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        raise APIError(200, "BadResponse", f"GET {path}: a watch event is not JSON: {line[:80]!r}") from None
    if not isinstance(event, dict):
        raise APIError(200, "BadResponse", f"GET {path}: a watch event is not a JSON object")
    return event


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class KubeAPI:
    """Typed calls the runtime makes; each one takes at most ``timeout`` seconds."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout

    @classmethod
    def from_environment(cls, timeout: float = DEFAULT_TIMEOUT) -> KubeAPI:
        """In-cluster ServiceAccount credentials, else the current kubeconfig context."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(configuration), timeout)

    @classmethod
    def for_host(
        cls, host: str, *, token: str | None = None, ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> KubeAPI:
        """An explicit API server URL (``http://`` for local doubles), optional bearer token and CA."""
        configuration = kubernetes.client.Configuration(host=host)
        if token is not None:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        if ca_file is not None:
            configuration.ssl_ca_cert = ca_file
        configuration.retries = False
        return cls(kubernetes.client.ApiClient(configuration), timeout)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    # -- transport -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: str = "application/json",
        content_type: str = "application/json",
        on_409: type[APIError] = ConflictError,
    ) -> Any:
        """One call; returns the decoded JSON answer or raises a typed ``APIError``."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.api_client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api_client.call_api(*serialized, _request_timeout=self.timeout)
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(0, type(exc).__name__, f"{method} {path}: {exc}") from None
        except kubernetes.client.ApiException as exc:  # TLS failures surface as status 0
            raise UnavailableError(0, "TLSError", f"{method} {path}: {exc.reason}") from None
        status = int(response.status)
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if 200 <= status < 300:
            if not isinstance(decoded, dict):
                raise APIError(status, "BadResponse", f"{method} {path}: the answer is not a JSON object")
            return decoded
        reason = str(decoded.get("reason", "")) if isinstance(decoded, dict) else ""
        message = str(decoded.get("message", "")) if isinstance(decoded, dict) else ""
        reason, message = reason or str(response.reason or ""), message or f"{method} {path}"
        if status == 404:
            raise NotFoundError(status, reason, message)
        if status == 409:
            raise (AlreadyExistsError if reason == "AlreadyExists" else on_409)(status, reason, message)
        if status == 429 or status >= 500:
            raise UnavailableError(status, reason, message)
        raise APIError(status, reason, message)

    def version(self) -> str:
        """The API server's ``gitVersion`` (readable by any client; used as a liveness probe)."""
        return str(self.request("GET", "/version").get("gitVersion", ""))

    # -- service-account issuer discovery ----------------------------------------------------

    def service_account_issuer(self) -> tuple[str, dict[str, Any]]:
        """The cluster's service-account token issuer and its JWKS, from the API server itself.

        Both documents are readable by every ServiceAccount (the default
        ``system:service-account-issuer-discovery`` ClusterRoleBinding). The JWKS is fetched
        from this client's own host at ``/openid/v1/jwks``, never from the discovery document's
        ``jwks_uri``, whose host is the API server's advertise address (often unreachable from a Pod).
        """
        discovery = self.request("GET", "/.well-known/openid-configuration")
        issuer = discovery.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise APIError(200, "BadResponse", "the service-account issuer discovery document has no issuer")
        jwks = self.request("GET", "/openid/v1/jwks", accept="application/jwk-set+json, application/json")
        if not isinstance(jwks.get("keys"), list):
            raise APIError(200, "BadResponse", "the service-account JWKS has no 'keys' list")
        return issuer, jwks

    # -- TokenReview -------------------------------------------------------------------------

    def token_review(self, token: str, audiences: Sequence[str]) -> Review:
        """Ask the API server who presents ``token``, for one of ``audiences``."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        answer = self.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        status = answer.get("status") or {}
        user = status.get("user") or {}
        return Review(
            authenticated=status.get("authenticated") is True,
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(user.get("groups") or ()),
            extra={str(k): tuple(str(v) for v in vs or ()) for k, vs in (user.get("extra") or {}).items()},
            audiences=tuple(status.get("audiences") or ()),
            error=str(status.get("error", "")),
        )

    # -- Pods --------------------------------------------------------------------------------

    def pod_metadata(self, namespace: str, name: str) -> ObjectMeta:
        """The Pod's metadata only (``PartialObjectMetadata``); needs ``get`` on pods, nothing more."""
        answer = self.request(
            "GET", f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}", accept=PARTIAL_METADATA
        )
        if answer.get("kind") != "PartialObjectMetadata":
            raise APIError(200, "BadResponse", f"expected PartialObjectMetadata, got {answer.get('kind')!r}")
        return ObjectMeta.of(answer.get("metadata") or {})

    def container_image(self, namespace: str, name: str, container: str) -> str:
        """The ``image`` of one container of the Pod's spec (``get`` on pods, as ``pod_metadata``)."""
        pod = self.request("GET", f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}")
        for entry in (pod.get("spec") or {}).get("containers") or ():
            if entry.get("name") == container and isinstance(entry.get("image"), str) and entry["image"]:
                image: str = entry["image"]
                return image
        raise APIError(200, "BadResponse", f"Pod {namespace}/{name} has no container {container!r} with an image")

    def service_account_metadata(self, namespace: str, name: str) -> ObjectMeta:
        """The ServiceAccount's metadata only (its annotations bind a role); needs ``get`` on serviceaccounts."""
        answer = self.request(
            "GET", f"/api/v1/namespaces/{_quote(namespace)}/serviceaccounts/{_quote(name)}", accept=PARTIAL_METADATA
        )
        if answer.get("kind") != "PartialObjectMetadata":
            raise APIError(200, "BadResponse", f"expected PartialObjectMetadata, got {answer.get('kind')!r}")
        return ObjectMeta.of(answer.get("metadata") or {})

    # -- Secrets -----------------------------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> Secret:
        return Secret.of(self.request("GET", f"/api/v1/namespaces/{_quote(namespace)}/secrets/{_quote(name)}"))

    def create_secret(self, secret: Secret) -> Secret:
        """Create; ``AlreadyExistsError`` when the name is taken."""
        path = f"/api/v1/namespaces/{_quote(secret.namespace)}/secrets"
        return Secret.of(self.request("POST", path, secret.to_object(), on_409=AlreadyExistsError))

    def replace_secret(self, secret: Secret, resource_version: str) -> Secret:
        """Replace if still at ``resource_version``; ``ConflictError`` when it changed, ``NotFoundError`` when gone."""
        if not resource_version:
            raise ValueError("replace_secret needs the resourceVersion that was read")
        path = f"/api/v1/namespaces/{_quote(secret.namespace)}/secrets/{_quote(secret.name)}"
        return Secret.of(self.request("PUT", path, secret.to_object(resource_version)))

    # -- MutatingWebhookConfigurations ---------------------------------------------------------

    def get_mutating_webhook(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"{_WEBHOOKS}/{_quote(name)}")
        return answer

    def watch_mutating_webhook(
        self, name: str, timeout_seconds: int, resource_version: str | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """The watch events (``{"type": ..., "object": ...}``) of one MutatingWebhookConfiguration,
        until the server ends the watch after ``timeout_seconds``.

        ``resource_version``: the changes after it (the ``resourceVersion`` of a read object: no
        gap between the read and the watch); ``"0"``: the state the server holds first (``ADDED``),
        then its changes. Unset, a real API server answers only once its watch cache is as recent
        as etcd: where nothing else of the kind changes, it ends such a watch after 3 s with an
        ``ERROR`` event ("Too large resource version", 504), so the caller passes one.

        The ``metadata.name`` field selector is what lets a ``watch`` limited by ``resourceNames``
        be authorized: Kubernetes checks the name of a list or watch only from that selector.
        A broken connection raises ``UnavailableError``, a line that is not JSON ``APIError``."""
        parameters = {"watch": "true", "fieldSelector": f"metadata.name={name}", "timeoutSeconds": str(timeout_seconds)}
        if resource_version is not None:
            parameters["resourceVersion"] = resource_version
        path = f"{_WEBHOOKS}?{urllib.parse.urlencode(parameters)}"
        serialized = self.api_client.param_serialize(
            "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        try:
            response = self.api_client.call_api(*serialized, _request_timeout=(self.timeout, timeout_seconds + 30))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(0, type(exc).__name__, f"GET {path}: {exc}") from None
        except kubernetes.client.ApiException as exc:
            raise UnavailableError(0, "TLSError", f"GET {path}: {exc.reason}") from None
        stream = response.response
        try:
            status = int(response.status)
            if status != 200:
                raise (UnavailableError if status == 429 or status >= 500 else APIError)(
                    status, str(response.reason or ""), f"GET {path}: {stream.data[:200]!r}"
                )
            buffer = b""
            try:
                for chunk in stream.stream(65536):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield _watch_event(line, path)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise UnavailableError(0, type(exc).__name__, f"GET {path}: {exc}") from None
        finally:
            stream.release_conn()

    def patch_mutating_webhook(
        self, name: str, patch: Any, kind: Literal["json", "merge", "strategic"] = "json"
    ) -> dict[str, Any]:
        """Patch (JSON patch operations, a merge patch or a strategic merge patch)."""
        answer: dict[str, Any] = self.request(
            "PATCH", f"{_WEBHOOKS}/{_quote(name)}", patch, content_type=_PATCH_TYPES[kind]
        )
        return answer
