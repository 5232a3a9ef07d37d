"""Admission inputs: the seed's example Pod and the AdmissionReview that carries a Pod to the webhook.

Used by the webhook tests (tests/webhook/, tests/adversarial/test_hostile_admission.py, tests/e2e/)
and by bench/admission.py and bench/hostile_admission.py.
"""

from __future__ import annotations

import json
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/ou-sts-oidc"


def seed_pod() -> dict[str, Any]:
    """The Pod of the seed's example Deployment (aws-test-python-simple)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "aws-test-python-simple-",
            "namespace": "default",
            "annotations": {"tremolo.io/aws-role": ROLE},
            "labels": {"app": "aws-test-python-simple", "tremolo.io/aws-role": "true"},
        },
        "spec": {
            "containers": [
                {
                    "env": [{"name": "AWS_REGION", "value": "us-east-1"}],
                    "image": "harbor.qalab.tremolo.dev/lab/aws-test-python",
                    "imagePullPolicy": "Always",
                    "name": "aws-cli",
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                }
            ],
            "dnsPolicy": "ClusterFirst",
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "terminationGracePeriodSeconds": 30,
        },
    }


def review_body(pod: Any, **changes: Any) -> bytes:
    document: dict[str, Any] = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "default",
            "object": pod,
        },
    }
    document["request"].update(changes)
    return json.dumps(document).encode()
