"""The hand-over from OpenUnison (README, "Migrating from OpenUnison", step 4), through the real
API server: while OpenUnison's webhook (``tests.openunison.inject``, served at another ClusterIP)
and kube-sts's are both registered for the same label, a labelled Pod passes both, in the order
of their configurations' names, with reinvocation. OpenUnison names its configuration
``injector-<endpoint>``, which sorts before ``kube-sts-<endpoint>``: that is the order a real
migration meets; a name sorting after ours gives the other order. Both for kube-sts's default
token path and for ``injector.tokenPath: /tokens/token.jwt`` (examples/openunison), served by a
second runtime whose endpoint selects its own label, so the session's webhook stays out of it."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness.reviews import ROLE, seed_pod
from tests import openunison
from tests.controlplane import cluster, deployment, webhooks
from tests.controlplane.test_admission import create, named
from tests.controlplane.test_injection_cases import containers

PATH = "/k8s/webhooks/v1/injector-aws"
BEFORE_OURS = "injector-aws"  # OpenUnison's own name for it: called before kube-sts-aws
AFTER_OURS = "zz-injector-aws"
TOKENS_LABEL = "migrate-role"
"""The label of the second runtime's endpoint (``injector.tokenPath: /tokens/token.jwt``)."""
KUBE_STS_DIR = "/var/run/secrets/kube-sts/aws"
SIDECAR = "kube-sts-aws"


class _OpenUnison(webhooks.ReviewHandler):
    """OpenUnison's injector endpoint for the endpoint label ``label``; a review its script fails
    on is answered 500, as OpenUnison's filter chain answers an exception."""

    label: str
    reviews: list[dict[str, Any]]
    failures: list[str]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod = review["request"]["object"]
        type(self).reviews.append(copy.deepcopy(pod))
        try:
            patches = openunison.inject(pod, label=type(self).label)
        except IndexError as error:
            type(self).failures.append(str(error))
            self.send_error(500, "TypeError")
            return
        self.answer(review, patches)


class OpenUnison:
    def __init__(self, plane: cluster.ControlPlane, server: webhooks.SecondWebhook, handler: type[_OpenUnison]) -> None:
        self.plane, self.server, self.handler = plane, server, handler

    @contextlib.contextmanager
    def registered(self, name: str, label: str) -> Iterator[None]:
        """OpenUnison's webhook configuration, named ``name``, for Pods labelled ``tremolo.io/<label>``."""
        self.handler.label = label
        self.handler.reviews.clear()
        self.handler.failures.clear()
        self.plane.apply(self.server.configuration(name, openunison.webhook(), path=PATH, label=f"tremolo.io/{label}"))
        try:
            yield
        finally:
            self.plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


@pytest.fixture(scope="module")
def ou(runtime: deployment.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenUnison]:
    plane = runtime.deployment.plane
    handler = type("OpenUnisonInjector", (_OpenUnison,), {"label": "aws-role", "reviews": [], "failures": []})
    server = webhooks.SecondWebhook(
        plane,
        tmp_path_factory.mktemp("openunison"),
        handler,
        address=plane.static_ip("openunison"),
        namespace="openunison",
        service="openunison-orchestra",
    )
    try:
        yield OpenUnison(plane, server, handler)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tokens_runtime(runtime: deployment.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second replica whose endpoint ``aws`` writes the token at ``/tokens/token.jwt`` for Pods
    labelled ``tremolo.io/migrate-role``, and a copy of the compiled webhook configuration that
    calls it (``kube-sts-aws-tokens``, sorting where ``kube-sts-aws`` does). Yields the name."""
    deployed = runtime.deployment
    replica = deployed.runtime(tmp_path_factory.mktemp("tokens-runtime"))
    injector = replica.config["endpoints"][0]["injector"]
    injector.update(label=TOKENS_LABEL, tokenPath=openunison.TOKEN_FILE)
    replica.config_file.write_text(json.dumps(replica.config))
    replica.start()
    compiled = copy.deepcopy(deployed.one("MutatingWebhookConfiguration"))
    [hook] = compiled["webhooks"]
    [bundle] = set(runtime.ca_bundles())
    hook["clientConfig"] = {
        "url": f"https://localhost:{replica.port}/mutate/aws",
        "caBundle": base64.b64encode(bundle).decode(),
    }
    hook["objectSelector"] = {"matchExpressions": [{"key": f"tremolo.io/{TOKENS_LABEL}", "operator": "Exists"}]}
    name = compiled["metadata"]["name"] + "-tokens"
    compiled["metadata"] = {"name": name}
    deployed.plane.apply(compiled)
    try:
        yield name
    finally:
        deployed.plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        replica.stop()


def labelled(namespace: str, name: str, label: str) -> dict[str, Any]:
    """The seed's Pod, labelled and annotated ``tremolo.io/<label>`` (the role)."""
    pod = named(seed_pod(), namespace, name)
    for key in ("labels", "annotations"):
        pod["metadata"][key].pop("tremolo.io/aws-role")
    pod["metadata"]["labels"][f"tremolo.io/{label}"] = "true"
    pod["metadata"]["annotations"][f"tremolo.io/{label}"] = ROLE
    return pod


def values(container: dict[str, Any], variable: str) -> list[str]:
    """The values of ``variable`` in the container's ``env``, in order."""
    return [e.get("value", "") for e in container.get("env", []) if e["name"] == variable]


def last_value(container: dict[str, Any], variable: str) -> str:
    """What the container's process sees: of repeated names, the last entry wins."""
    [*_, value] = values(container, variable)
    return value


def reader(stored: dict[str, Any], container: str, path: str) -> str:
    """The volume of ``container`` that holds ``path`` (its longest mount path above it)."""
    mounts = [m for m in containers(stored)[container]["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    return str(max(mounts, key=lambda m: len(m["mountPath"]))["name"])


def writers(stored: dict[str, Any], volume: str) -> list[str]:
    """The native sidecars that mount ``volume`` writable."""
    return [
        c["name"]
        for c in stored["spec"]["initContainers"]
        if c.get("restartPolicy") == "Always"
        and any(m["name"] == volume and not m.get("readOnly") for m in c.get("volumeMounts", []))
    ]


# -- kube-sts's default token path -----------------------------------------------------------------


def test_openunison_first_with_the_default_path(runtime: deployment.Runtime, ou: OpenUnison, namespace: str) -> None:
    """The order a migration meets: OpenUnison sets the variables, kube-sts adds its sidecar and
    its mount but keeps the variables the container already has; OpenUnison, reinvoked, sets them
    again and puts its sidecar first again. The application reads OpenUnison's token."""
    plane = runtime.deployment.plane
    with ou.registered(BEFORE_OURS, "aws-role"):
        stored = create(plane, namespace, labelled(namespace, "ou-first", "aws-role"))
    assert (len(ou.handler.reviews), ou.handler.failures) == (2, [])  # called, then reinvoked
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [openunison.SIDECAR, SIDECAR]
    app = containers(stored)["aws-cli"]
    assert values(app, "AWS_WEB_IDENTITY_TOKEN_FILE") == [openunison.TOKEN_FILE] * 2
    assert values(app, "AWS_ROLE_ARN") == [ROLE] * 2
    assert [m["mountPath"] for m in app["volumeMounts"]].count("/tokens") == 1
    assert KUBE_STS_DIR in {m["mountPath"] for m in app["volumeMounts"]}
    assert reader(stored, "aws-cli", openunison.TOKEN_FILE) == openunison.VOLUME
    assert writers(stored, openunison.VOLUME) == [openunison.SIDECAR]


def test_kube_sts_first_with_the_default_path(runtime: deployment.Runtime, ou: OpenUnison, namespace: str) -> None:
    """kube-sts sets its variables first; OpenUnison appends its own after them (the last of a
    repeated name wins), and its reinvocation fails on its script's slip (no application
    container at the index of kube-sts's init container), which ``failurePolicy: Ignore`` lets
    pass. The application reads OpenUnison's token."""
    plane = runtime.deployment.plane
    with ou.registered(AFTER_OURS, "aws-role"):
        stored = create(plane, namespace, labelled(namespace, "sts-first", "aws-role"))
    assert (len(ou.handler.reviews), ou.handler.failures) == (2, ["list index out of range"])
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [openunison.SIDECAR, SIDECAR]
    app = containers(stored)["aws-cli"]
    assert values(app, "AWS_WEB_IDENTITY_TOKEN_FILE") == [f"{KUBE_STS_DIR}/token", openunison.TOKEN_FILE]
    assert last_value(app, "AWS_WEB_IDENTITY_TOKEN_FILE") == openunison.TOKEN_FILE
    assert reader(stored, "aws-cli", openunison.TOKEN_FILE) == openunison.VOLUME
    assert writers(stored, openunison.VOLUME) == [openunison.SIDECAR]


# -- injector.tokenPath: /tokens/token.jwt ---------------------------------------------------------


def test_openunison_first_with_the_tokens_path(
    runtime: deployment.Runtime, ou: OpenUnison, tokens_runtime: str, namespace: str
) -> None:
    """kube-sts adds no second mount at ``/tokens`` (the container has one) and no variable it
    already has: the application reads OpenUnison's volume; kube-sts's sidecar writes its own."""
    plane = runtime.deployment.plane
    with ou.registered(BEFORE_OURS, TOKENS_LABEL):
        stored = create(plane, namespace, labelled(namespace, "ou-first-tokens", TOKENS_LABEL))
    assert (len(ou.handler.reviews), ou.handler.failures) == (2, [])
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [openunison.SIDECAR, SIDECAR]
    app = containers(stored)["aws-cli"]
    mounts = [(m["name"], m["mountPath"]) for m in app["volumeMounts"] if not m["name"].startswith("kube-api-")]
    assert mounts == [(openunison.VOLUME, "/tokens")]
    assert values(app, "AWS_WEB_IDENTITY_TOKEN_FILE") == [openunison.TOKEN_FILE] * 2
    assert writers(stored, openunison.VOLUME) == [openunison.SIDECAR]
    assert reader(stored, SIDECAR, openunison.TOKEN_FILE) == "kube-sts-aws-token"


def test_kube_sts_first_with_the_tokens_path(
    runtime: deployment.Runtime, ou: OpenUnison, tokens_runtime: str, namespace: str
) -> None:
    """OpenUnison adds its mount at ``/tokens`` beside kube-sts's (it looks for its volume's name,
    not the path): the API server refuses the Pod. Without OpenUnison's webhook the same Pod (the
    controller's retry) is admitted with kube-sts's sidecar alone."""
    plane = runtime.deployment.plane
    pod = labelled(namespace, "sts-first-tokens", TOKENS_LABEL)
    with ou.registered(AFTER_OURS, TOKENS_LABEL):
        refused = create(plane, namespace, pod, check=False)
    assert refused.returncode != 0
    assert (
        'The Pod "sts-first-tokens" is invalid: spec.containers[0].volumeMounts[2].mountPath: Invalid value: '
        '"/tokens": must be unique'
    ) in refused.stderr
    assert plane.get("pod", "sts-first-tokens", namespace) is None
    stored = create(plane, namespace, pod)
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [SIDECAR]
    app = containers(stored)["aws-cli"]
    assert values(app, "AWS_WEB_IDENTITY_TOKEN_FILE") == [openunison.TOKEN_FILE]
    assert writers(stored, reader(stored, "aws-cli", openunison.TOKEN_FILE)) == [SIDECAR]
