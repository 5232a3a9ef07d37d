"""A second mutating webhook beside kube-sts's, served by the test process at a ClusterIP of the
control plane (a service mesh's injector, OpenUnison's), and the handler base its servers share."""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import ssl
import threading
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.controlplane import cluster


class ReviewHandler(http.server.BaseHTTPRequestHandler):
    """The answering half of a webhook handler: ``answer`` allows the review, with ``patch`` (JSONPatch
    operations) when given; subclasses read the review in ``do_POST``."""

    def answer(self, review: dict[str, Any], patch: list[dict[str, Any]] | None) -> None:
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
        if patch is not None:
            response.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class SecondWebhook:
    """A mutating webhook server of the test process at ``address``:443 behind a Service
    ``namespace/service`` (a ClusterIP of the cluster's Service CIDR), with a certificate of a CA
    of its own for the Service's name (``ca_bundle``: that CA, base64, for ``clientConfig``).
    ``stop`` shuts the server down."""

    def __init__(
        self,
        plane: cluster.ControlPlane,
        directory: pathlib.Path,
        handler: type[http.server.BaseHTTPRequestHandler],
        *,
        address: str,
        namespace: str,
        service: str,
    ) -> None:
        self.namespace, self.service = namespace, service
        ca = cluster._CA.create(f"{service} webhook CA")
        certificate, key = ca.issue(cluster._name(service), client=False, dns=(f"{service}.{namespace}.svc",))
        (directory / "tls.crt").write_bytes(certificate)
        (directory / "tls.key").write_bytes(key)
        plane.create_namespace(namespace)
        plane.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service, "namespace": namespace},
                "spec": {"clusterIP": address, "ports": [{"port": 443, "targetPort": 443}]},
            }
        )
        self.server = http.server.ThreadingHTTPServer((address, 443), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(directory / "tls.crt"), str(directory / "tls.key"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM)
        self.ca_bundle = base64.b64encode(ca_pem).decode()

    def configuration(self, name: str, hook: dict[str, Any], *, path: str, label: str) -> dict[str, Any]:
        """A MutatingWebhookConfiguration ``name`` of one webhook (``hook``: its name and
        policies) calling this server at ``path``, for Pods that carry the label ``label``."""
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    **hook,
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "service": {"name": self.service, "namespace": self.namespace, "path": path, "port": 443},
                        "caBundle": self.ca_bundle,
                    },
                    "objectSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]},
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                    ],
                }
            ],
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
