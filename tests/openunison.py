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
"""

from __future__ import annotations

import base64
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
