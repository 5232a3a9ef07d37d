"""At exchange, against the real API server, the token service reads the same sources as the
webhook: the role bound by the Pod's ServiceAccount (which wins over the Pod's own annotation) and
the Pod's token lifetime. The ASGI app is driven straight with the rendered ServiceAccount's client
(``runtime_kube``); each test has a ServiceAccount of its own in ``myns`` and a TokenRequest bound
to a real Pod of it. The metadata-only read (a wire detail) and a ServiceAccount deleted between the review and its
read (a window the real TokenReview does not show) stay on the double in
tests/runtime/test_account_binding.py."""

from __future__ import annotations

import itertools
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from harness import runtime as harness
from harness.reviews import seed_pod
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import cluster
from tests.controlplane.test_admission import named
from tests.runtime.test_token_service import exchange

BOUND = "arn:aws:iam::123456789012:role/bound"
OTHER = "arn:aws:iam::123456789012:role/other"
_accounts = itertools.count(1)


@pytest.fixture
def app(runtime_kube: kubeapi.KubeAPI, myns: str, tmp_path: pathlib.Path) -> Iterator[server.App]:
    harness.write_keyset(tmp_path, "aws", "RS256")
    rule = "(&(namespace=myns)(role=arn:aws:iam::123456789012:role/*))"
    application = harness.make_app(harness.runtime_config(harness.endpoint(rules=[rule])), runtime_kube, tmp_path)
    yield application
    application.executor.shutdown(wait=True)


class Caller:
    """A ServiceAccount of the test's own in ``myns`` (annotated ``account``) and a Pod of it."""

    def __init__(
        self, plane: cluster.ControlPlane, pod_annotations: dict[str, str], account: dict[str, str] | None = None
    ) -> None:
        self.plane = plane
        self.name = f"binding-{next(_accounts)}"
        plane.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": self.name, "namespace": "myns", "annotations": account or {}},
            }
        )
        pod = named(seed_pod(), "myns", self.name)
        del pod["metadata"]["labels"]["tremolo.io/aws-role"]  # not through the webhook: the Pod as edited later
        pod["metadata"]["annotations"] = dict(pod_annotations)
        pod["spec"]["serviceAccountName"] = self.name
        self.pod: dict[str, Any] = json.loads(
            plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod)).stdout
        )
        self.token = plane.token("myns", self.name, harness.STS_AUDIENCE, pod=self.pod)


def minted(answer: harness.Answer) -> dict[str, object]:
    assert answer.status == 200, answer.body
    claims: dict[str, object] = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    return claims


@pytest.mark.parametrize("key", [config.EKS_ROLE_ANNOTATION, "tremolo.io/aws-role"])
def test_the_service_accounts_role_is_the_callers_role(
    control_plane: cluster.ControlPlane, app: server.App, key: str
) -> None:
    caller = Caller(control_plane, {}, {key: BOUND})
    claims = minted(exchange(app, caller.token))
    assert claims["sub"] == f"test-cluster:myns:{caller.name}:{BOUND}"


def test_without_a_binding_the_pods_annotation_is_the_role(
    control_plane: cluster.ControlPlane, app: server.App
) -> None:
    caller = Caller(control_plane, {"tremolo.io/aws-role": OTHER}, {})
    claims = minted(exchange(app, caller.token))
    assert claims["sub"] == f"test-cluster:myns:{caller.name}:{OTHER}"


def test_a_pod_cannot_claim_another_role_than_its_service_account(
    control_plane: cluster.ControlPlane, app: server.App
) -> None:
    caller = Caller(control_plane, {"tremolo.io/aws-role": OTHER}, {config.EKS_ROLE_ANNOTATION: BOUND})
    answer = exchange(app, caller.token)
    assert (answer.status, answer.json()["error"]) == (403, "role_conflict"), answer.body
    assert [line["reason"] for line in harness.audit_lines(app)] == ["role_conflict"]


@pytest.mark.parametrize(("value", "seconds"), [("900", 900), ("15m", 900), ("600", 600), ("1h", 3600)])
def test_the_pods_token_lifetime_is_the_minted_tokens(
    control_plane: cluster.ControlPlane, app: server.App, value: str, seconds: int
) -> None:
    caller = Caller(control_plane, {"tremolo.io/aws-role": BOUND, config.LIFETIME_ANNOTATION: value})
    answer = exchange(app, caller.token)
    claims = minted(answer)
    assert claims["exp"] == claims["iat"] + seconds == answer.json()["expires_at"]  # type: ignore[operator]
    assert answer.json()["expires_in"] == seconds


@pytest.mark.parametrize("value", ["599", "3601", "1d", "soon"])
def test_a_token_lifetime_outside_the_bounds_is_refused(
    control_plane: cluster.ControlPlane, app: server.App, value: str
) -> None:
    """Only a Pod whose annotation was edited after admission gets here: the webhook refuses it first."""
    caller = Caller(control_plane, {"tremolo.io/aws-role": BOUND, config.LIFETIME_ANNOTATION: value})
    answer = exchange(app, caller.token)
    assert (answer.status, answer.json()["error"]) == (403, "invalid_lifetime"), answer.body
    assert "from 600 to 3600 seconds" in answer.json()["message"]
