"""OpenUnison's STS as the system kube-sts replaces, rebuilt from its code for migration tests.

- The key pair: OpenUnison's operator creates each key pair of its ``key_store`` (the STS uses
  ``unison-saml2-rp-sig``) as a 2048-bit RSA key with a self-signed certificate whose subject
  is ``CN=<name>`` plus the chart's ``cert_template``, and keeps it in a Secret of type
  ``kubernetes.io/tls`` named after the key pair in OpenUnison's namespace.
- The token (``com.tremolosecurity.scalejs.token.sts.StsToken``, jose4j): header ``{"alg":
  "RS256"}`` only (no ``kid``, no ``typ``); claims ``iss`` ``https://<issuer.host>``, ``aud`` the
  endpoint's audience, ``exp`` ``minutesTTL`` (15) minutes ahead, ``nbf`` one minute back, a
  generated ``jti``, ``iat`` now, ``sub`` ``<cluster>:<namespace>:<serviceaccount>``
  (``ServiceAccount2Claims``: ``cluster`` is ``K8S_CLUSTER_NAME``, i.e. ``k8s_cluster_name``)
  and the additional claims ``cluster``, ``namespace``, ``saname``.
- The issuer documents (the chart's ``{path}/issuer-docs`` script): the discovery document of
  ``https://<issuer.host>`` with ``jwks_uri`` ``https://<host>/certs`` and a JWKS of the one key,
  ``kid`` ``<subject DN>-<issuer DN>-<serial>`` (Java's ``getName()`` forms), ``use`` ``sig``,
  ``alg`` ``RS256``.
- The injector (``openunison-kube-sts``'s ``sts-injector-<endpoint>`` Application, a JavaScript
  filter; registered by ``openunison-kube-sts-pre`` as the MutatingWebhookConfiguration
  ``injector-<endpoint>``: ``failurePolicy: Ignore``, ``reinvocationPolicy: IfNeeded``, Pods with
  the label ``tremolo.io/<label>``): ``inject`` ports it line by line, including what it gets
  wrong (see there).
"""

from __future__ import annotations

import base64
import copy
import datetime
import secrets
import time
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwk

MINUTES_TTL = 15


def keypair(name: str = "unison-saml2-rp-sig") -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "State of Cluster"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "My Cluster"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyOrg"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Kubernetes"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def secret(key: rsa.RSAPrivateKey, certificate: x509.Certificate, name: str = "unison-saml2-rp-sig") -> dict[str, Any]:
    """The Secret as ``kubectl -n openunison get secret <name> -o yaml`` prints it."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    crt = certificate.public_bytes(serialization.Encoding.PEM)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "openunison",
            "labels": {"tremolo_operator_created": "true"},
            "resourceVersion": "4211",
            "uid": "8d3c6a0e-2b4f-4b59-9f5e-0c1d2e3f4a5b",
        },
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(pem).decode()},
    }


def _java_name(name: x509.Name) -> str:
    """``X500Principal.getName()``-like: most specific RDN first, ``, `` between them."""
    return ", ".join(name.rfc4514_string().split(","))


def kid(certificate: x509.Certificate) -> str:
    return f"{_java_name(certificate.subject)}-{_java_name(certificate.issuer)}-{certificate.serial_number}"


def issuer_docs(host: str, certificate: x509.Certificate) -> dict[str, Any]:
    """What OpenUnison's ``{path}/issuer-docs`` answers (the parts AWS reads)."""
    key = jwk.JWK.from_pyca(certificate.public_key())
    public = {**key.export_public(as_dict=True), "kid": kid(certificate), "use": "sig", "alg": "RS256"}
    discovery = {
        "issuer": f"https://{host}",
        "authorization_endpoint": f"https://{host}/auth",
        "token_endpoint": f"https://{host}/token",
        "jwks_uri": f"https://{host}/certs",
        "response_types_supported": ["code", "token", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["sub", "aud", "iss", "exp", "sub", "cluster", "namespace", "saname"],
    }
    return {"discovery": discovery, "keys": {"keys": [public]}}


def mint(key: rsa.RSAPrivateKey, *, host: str, audience: str, cluster: str, namespace: str, saname: str) -> str:
    """A token as ``StsToken.loadToken`` signs it."""
    now = int(time.time())
    claims = {
        "iss": f"https://{host}",
        "aud": audience,
        "exp": now + MINUTES_TTL * 60,
        "nbf": now - 60,
        "jti": base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode(),
        "iat": now,
        "sub": f"{cluster}:{namespace}:{saname}",
        "cluster": cluster,
        "namespace": namespace,
        "saname": saname,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"typ": None})


SIDECAR = "sts-creds-sidecar"
VOLUME = "sts-tokens"
TOKEN_FILE = "/tokens/token.jwt"
IMAGE = "ghcr.io/openunisonio/openunison-cli:1.0.43"


def webhook(endpoint: str = "aws") -> dict[str, Any]:
    """The webhook entry of ``injector-<endpoint>`` (its name and policies, as the chart sets them)."""
    return {
        "name": f"injector-{endpoint}.tremolo.io",
        "failurePolicy": "Ignore",
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "NoneOnDryRun",
    }


def inject(
    pod: dict[str, Any],
    *,
    label: str = "aws-role",
    token_variable: str = "AWS_WEB_IDENTITY_TOKEN_FILE",
    role_variable: str = "AWS_ROLE_ARN",
    url: str = "https://k8sou.example.com/sts/token/user",
) -> list[dict[str, Any]] | None:
    """The JSONPatch OpenUnison's injector answers for ``pod`` (None: no patch, the Pod lacks the
    annotation ``tremolo.io/<label>``), with ``explicit_certificate_trust`` off.

    A port of the filter's ``doFilter``, keeping its ways: the lists it patches are the Pod's own,
    appended to in place and serialized at the end (a later append shows in an earlier
    operation's value); every container gets the two variables appended whether it has them or
    not (``replace`` of the whole ``env``), and the mount at ``/tokens`` unless it mounts a volume
    named ``sts-tokens`` (whatever else it mounts there); its sidecar goes first in
    ``initContainers`` (removed and added again on a reinvocation); for each other init container
    at index ``i`` it checks the mounts of *application* container ``i`` (the chart's slip), and
    fails (a TypeError in JavaScript, an HTTP 500 the API server ignores, as ``failurePolicy:
    Ignore`` says) when there is no application container ``i``: here an ``IndexError``.
    """
    pod = copy.deepcopy(pod)  # the filter parses the review afresh
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    role = annotations.get(f"tremolo.io/{label}")
    if not role:
        return None
    inject_mounts = annotations.get("tremolo.io/create-volume") != "false"
    spec = pod["spec"]
    patches: list[dict[str, Any]] = []
    for i, container in enumerate(spec["containers"]):
        env = container.get("env")
        op = "replace"
        if env is None:  # JavaScript: ``!env`` (an empty array is truthy)
            env, op = [], "add"
        env.append({"name": token_variable, "value": TOKEN_FILE})
        env.append({"name": role_variable, "value": role})
        patches.append({"op": op, "path": f"/spec/containers/{i}/env", "value": env})
        op = "replace"
        mounts = container.get("volumeMounts")
        exists = False
        if mounts is None:
            mounts, op = [], "add"
        else:
            exists = any(mount.get("name") == VOLUME for mount in mounts)
        if not exists:
            mounts.append({"mountPath": "/tokens", "name": VOLUME, "readOnly": True})
            patches.append({"op": op, "path": f"/spec/containers/{i}/volumeMounts", "value": mounts})
    security: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["all"]}}
    sidecar: dict[str, Any] = {
        "image": IMAGE,
        "name": SIDECAR,
        "args": [
            "exchange",
            "--cacert-path=/etc/ssl/certs/ca-certificates.crt",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            url,
            "/tokens",
        ],
        "securityContext": security,
        "env": [],
        "restartPolicy": "Always",
        "volumeMounts": [{"mountPath": "/tokens", "name": VOLUME, "readOnly": False}],
    }
    user = int(annotations.get("tremolo.io/user", "0"))
    group = int(annotations.get("tremolo.io/group", "0"))
    if user > 0:
        security["runAsUser"] = user
    if group > 0:
        security["runAsGroup"] = group
    already, index, current = False, 0, {}
    init_containers = spec.get("initContainers")
    if init_containers is None:
        patches.append({"op": "add", "path": "/spec/initContainers", "value": []})
    else:
        for i, init in enumerate(init_containers):
            if init.get("name") == SIDECAR:
                already, index, current = True, i, init
                continue
            env = init.get("env")
            op = "replace"
            if env is None:
                env, op = [], "add"
            env.append({"name": token_variable, "value": TOKEN_FILE})
            env.append({"name": role_variable, "value": role})
            patches.append({"op": op, "path": f"/spec/initContainers/{i}/env", "value": env})
            op = "replace"
            found = False
            mounts = spec["containers"][i].get("volumeMounts")  # sic: containers, not initContainers
            if mounts is None:
                mounts, op = [], "add"
            else:
                found = any(mount.get("name") == VOLUME for mount in mounts)
            if not found:
                mounts.append({"mountPath": "/tokens", "name": VOLUME, "readOnly": True})
                patches.append({"op": op, "path": f"/spec/initContainers/{i}/volumeMounts", "value": mounts})
    if already:
        patches.append({"op": "remove", "path": f"/spec/initContainers/{index}"})
        sidecar = current
    patches.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    volumes = spec.get("volumes")
    op = "replace"
    exists = False
    if volumes is None:
        volumes, op = [], "add"
    else:
        exists = any(volume.get("name") == VOLUME for volume in volumes)
    if not exists:
        if inject_mounts:
            volumes.append({"name": VOLUME, "emptyDir": {}})
        if volumes:
            patches.append({"op": op, "path": "/spec/volumes", "value": volumes})
    return patches
