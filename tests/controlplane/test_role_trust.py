"""A token authorized for one role is refused by the trust policy of any other role, with tokens
minted from TokenRequests bound to real Pods whose role annotation the real API server stores (the
rest of the argument, with no Kubernetes in it, is tests/adversarial/test_role_binding.py)."""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.runtime.kube import api as kubeapi
from tests import awssts
from tests.adversarial.test_role_binding import ACCOUNT, ADMIN, AUDIENCE, HOST, READER, RULE, readme_trust_policy
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod

_pods = itertools.count(1)


class World:
    def __init__(self, running: harness.RunningServer, tls: harness.TLSFiles, plane: cluster.ControlPlane) -> None:
        self.running, self.tls, self.plane = running, tls, plane
        self.sts = awssts.AWSSTS(ACCOUNT)
        self.sts.add_provider(
            awssts.Provider(f"https://{HOST}", (AUDIENCE,), f"{running.url}/aws", tls.client_context())
        )
        for role in (READER, ADMIN):
            self.sts.policies[role] = readme_trust_policy(role)

    def exchange(self, role: str) -> tuple[int, dict[str, Any]]:
        """``role`` annotated on a new real Pod; its bound TokenRequest exchanged."""
        name = f"role-{next(_pods)}"
        pod = create_pod(self.plane, "myns", name, labelled=False, annotations={"tremolo.io/aws-role": role})
        sa_token = self.plane.token("myns", "app", harness.STS_AUDIENCE, pod=pod)
        answer = harness.asgi_call(self.running.app, "POST", "/aws/token", {"authorization": f"Bearer {sa_token}"})
        return answer.status, answer.json()

    def assume(self, role_arn: str, token: str) -> str:
        """``AssumeRoleWithWebIdentity`` as botocore sends it; the error code, or ``ok``."""
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "RoleArn": role_arn,
            "RoleSessionName": "s",
            "WebIdentityToken": token,
        }
        try:
            self.sts.assume_role(form)
        except awssts.STSError as error:
            return error.code
        return "ok"


@pytest.fixture
def world(
    control_plane: cluster.ControlPlane, myns: str, runtime_kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> Iterator[World]:
    tls = harness.make_tls(tmp_path / "tls")
    harness.write_keyset(tmp_path, "aws", "RS256")
    app = harness.make_app(harness.runtime_config(harness.endpoint(rules=[RULE])), runtime_kube, tmp_path)
    with harness.RunningServer(app, tls) as running:
        yield World(running, tls, control_plane)
    app.executor.shutdown(wait=True)


def test_a_token_for_one_role_is_refused_by_another_roles_trust_policy(world: World) -> None:
    status, body = world.exchange(READER)
    assert status == 200
    token = body["token"]
    assert world.assume(READER, token) == "ok"
    # a container of the allowed-reader Pod that sets AWS_ROLE_ARN itself (the webhook leaves it)
    # hands AWS the same token for payments-admin: AWS refuses it
    assert world.assume(ADMIN, token) == "AccessDenied"
    assert world.sts.calls[0].claims["sub"] == f"{harness.CLUSTER}:myns:app:{READER}"


def test_the_rules_refuse_the_other_role(world: World) -> None:
    status, body = world.exchange(ADMIN)
    assert (status, body["error"]) == (403, "denied")


def test_a_role_smuggled_after_an_allowed_prefix_is_refused_by_aws(world: World) -> None:
    # The rule's `allowed-*` also matches this value; the pinned sub still names another role.
    status, body = world.exchange(f"{READER}x:{ADMIN}")
    assert status == 200
    assert world.assume(ADMIN, body["token"]) == "AccessDenied"
    assert world.assume(READER, body["token"]) == "AccessDenied"
