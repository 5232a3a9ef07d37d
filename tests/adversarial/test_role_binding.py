"""A token authorized for one role is refused by the trust policy of any other role.

Rules such as ``(role=arn:aws:iam::123456789012:role/allowed-*)`` decide which role a Pod may
use; the minted ``sub`` carries the authorized role (``<cluster>:<namespace>:<sa>:<role>``), and
the trust policy the README documents pins the whole ``sub`` with ``StringEquals``, so AWS
itself refuses a token for any other role, also when a container sets its own ``AWS_ROLE_ARN``.
The exchanges of real tokens for real Pods are tests/controlplane/test_role_trust.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.compiler import source
from kube_sts.runtime import config
from tests import awssts
from tests.compiler.values_files import aws_values

ACCOUNT = "123456789012"
READER = f"arn:aws:iam::{ACCOUNT}:role/allowed-reader"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/payments-admin"
RULE = f"(&(namespace=myns)(role=arn:aws:iam::{ACCOUNT}:role/allowed-*))"
AUDIENCE = "sts.amazonaws.com"
HOST = harness.ISSUER_HOST
ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_trust_policy(role_arn: str, namespace: str = "myns", serviceaccount: str = "app") -> dict[str, Any]:
    """The trust policy the README tells users to write for ``role_arn``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{HOST}:aud": AUDIENCE,
                        f"{HOST}:sub": f"{harness.CLUSTER}:{namespace}:{serviceaccount}:{role_arn}",
                    }
                },
            }
        ],
    }


def test_default_subject_carries_the_role_only_where_rules_decide_on_it() -> None:
    assert harness.endpoint(rules=[RULE]).subject_template == config.ROLE_SUBJECT
    assert harness.endpoint(rules=["(namespace=myns)"]).subject_template == config.DEFAULT_SUBJECT  # the seed's sub
    assert harness.endpoint(rules=[RULE], label=None).subject_template == config.DEFAULT_SUBJECT
    explicit = harness.endpoint(rules=[RULE], subject="{cluster}:{namespace}:{saname}")
    assert explicit.subject_template == config.DEFAULT_SUBJECT and explicit.role_unenforceable
    assert not harness.endpoint(rules=[RULE]).role_unenforceable


# -- the double's trust-policy evaluation, from IAM's documented rules ------------------------------

PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST}"


def _policy(condition: dict[str, Any], effect: str = "Allow", action: str = "sts:AssumeRoleWithWebIdentity") -> Any:
    return {
        "Statement": {"Effect": effect, "Principal": {"Federated": PROVIDER}, "Action": action, "Condition": condition}
    }


@pytest.mark.parametrize(
    ("condition", "sub", "expected"),
    [
        ({"StringEquals": {f"{HOST}:sub": "c:ns:sa"}}, "c:ns:sa", True),
        ({"StringEquals": {f"{HOST}:sub": "c:ns:sa"}}, "C:ns:sa", False),  # values are case-sensitive
        ({"StringEquals": {f"{HOST.upper()}:SUB": "c:ns:sa"}}, "c:ns:sa", True),  # key names are not
        ({"StringEquals": {f"{HOST}:sub": ["x", "c:ns:sa"]}}, "c:ns:sa", True),  # values OR-ed
        ({"StringLike": {f"{HOST}:sub": "c:ns:*"}}, "c:ns:sa", True),
        ({"StringLike": {f"{HOST}:sub": "c:ns:*"}}, "c:ns:", True),  # * matches nothing too
        ({"StringLike": {f"{HOST}:sub": "c:ns:s?"}}, "c:ns:sa", True),
        ({"StringLike": {f"{HOST}:sub": "c:ns:s?"}}, "c:ns:s", False),
        ({"StringLike": {f"{HOST}:sub": "c:NS:*"}}, "c:ns:sa", False),
        ({"StringLike": {f"{HOST}:sub": "c.ns*"}}, "cxns", False),  # no regular expressions
        ({"StringNotLike": {f"{HOST}:sub": "*admin*"}}, "c:ns:admin", False),
        ({"StringNotEquals": {f"{HOST}:sub": "c:ns:sa"}}, "c:ns:sb", True),
        ({"StringEquals": {f"{HOST}:sub": "c:ns:sa", f"{HOST}:aud": AUDIENCE}}, "c:ns:sa", True),  # keys AND-ed
        ({"StringEquals": {f"{HOST}:aud": "other"}, "StringLike": {f"{HOST}:sub": "*"}}, "c:ns:sa", False),
        ({"StringEquals": {f"{HOST}:role": "c:ns:sa"}}, "c:ns:sa", False),  # custom claims are no condition keys
        ({"StringEqualsIfExists": {f"{HOST}:role": "x"}}, "c:ns:sa", True),
        ({}, "c:ns:sa", True),
    ],
)
def test_trust_policy_conditions(condition: dict[str, Any], sub: str, expected: bool) -> None:
    claims = {"sub": sub, "aud": AUDIENCE, "role": "c:ns:sa"}
    assert awssts.trust_allows(_policy(condition), PROVIDER, f"https://{HOST}", claims) is expected


def test_trust_policy_statements() -> None:
    claims = {"sub": "c:ns:sa", "aud": AUDIENCE}
    url = f"https://{HOST}"
    allow = _policy({})["Statement"]
    deny = _policy({"StringLike": {f"{HOST}:sub": "c:*"}}, effect="Deny")["Statement"]
    assert awssts.trust_allows({"Statement": [allow, deny]}, PROVIDER, url, claims) is False  # Deny wins
    assert awssts.trust_allows({"Statement": [deny]}, PROVIDER, url, {**claims, "sub": "d"}) is False  # no Allow
    assert awssts.trust_allows(_policy({}, action="sts:*"), PROVIDER, url, claims) is True
    assert awssts.trust_allows(_policy({}, action="sts:AssumeRole"), PROVIDER, url, claims) is False
    assert awssts.trust_allows(_policy({}), PROVIDER.replace(ACCOUNT, "999999999999"), url, claims) is False
    with pytest.raises(awssts.STSError):
        awssts.trust_allows(_policy({"NumericEquals": {f"{HOST}:sub": "1"}}), PROVIDER, url, claims)
    assert json.dumps(readme_trust_policy(READER))  # serializable as the README shows it


# -- the compiler warns when rules decide on role but the token cannot carry it ---------------------

VALUES = aws_values("(&(namespace=myns)(role=arn:aws:iam::123456789012:role/allowed-*))")


def test_no_warning_when_the_default_sub_carries_the_role() -> None:
    assert source.check(VALUES)[1] == ()


def test_warning_when_an_explicit_subject_drops_the_role(tmp_path: pathlib.Path) -> None:
    text = VALUES + '    token:\n      subject: "{cluster}:{namespace}:{saname}"\n'
    (warning,) = source.check(text)[1]
    assert (warning.line, warning.column, warning.path, warning.code) == (
        17, 16, "sts.endpoints[0].token.subject", "role-not-enforceable"
    )  # fmt: skip
    path = tmp_path / "values.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", str(path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0 and b"kind: Deployment" in result.stdout
    stderr = result.stderr.decode()
    assert stderr.startswith(f"{path}:17:16: warning: sts.endpoints[0].token.subject: the rules decide on 'role'")
    assert stderr.endswith("1 warning\n")


def test_warning_for_an_endpoint_without_the_aws_injector() -> None:
    text = VALUES.replace("AWS_ROLE_ARN", "AZURE_CLIENT_ID")
    (warning,) = source.check(text)[1]
    assert (warning.line, warning.path, warning.code) == (6, "sts.endpoints[0].azRules", "role-not-enforceable")
