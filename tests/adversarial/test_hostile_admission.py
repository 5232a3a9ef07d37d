"""Hostile AdmissionReviews: bounded work and answer, malformed Pods, Pods that collide with the injection.

Each review goes through the real application (``server.App`` with the webhook's routes), so an
unhandled exception would show as the catch-all 500.
"""

from __future__ import annotations

import base64
import copy
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import runtime as harness
from harness.reviews import review_body, seed_pod
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import admission as webhook
from kube_sts.runtime.webhook import injection
from tests.webhook.test_injection import CA, runtime

PATH = "/mutate/aws"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.App]:
    yield from make_app(runtime(), tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def legacy_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.App]:
    yield from make_app(runtime(native=False), tmp_path_factory.mktemp("keys"))


def make_app(rt: config.RuntimeConfig, keys_dir: pathlib.Path) -> Iterator[server.App]:
    kube = kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=1.0)
    application = harness.make_app(rt, kube, keys_dir)
    webhook.add_routes(application, rt, CA.encode)
    yield application
    kube.close()


def post(application: server.App, body: bytes) -> harness.Answer:
    return harness.asgi_call(application, "POST", PATH, {"content-type": "application/json"}, body)


def refusal(answer: harness.Answer) -> tuple[int, str]:
    """The status code and message of an AdmissionReview that refuses the Pod."""
    assert answer.status == 200, answer.body[:300]
    response = answer.json()["response"]
    assert response["allowed"] is False and "patch" not in response
    return response["status"]["code"], response["status"]["message"]


def patched_pod(answer: harness.Answer, pod: dict[str, Any]) -> dict[str, Any]:
    assert answer.status == 200, answer.body[:300]
    response = answer.json()["response"]
    assert response["allowed"] is True, response
    if "patch" not in response:
        return pod
    result: dict[str, Any] = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return result


# -- item: bounded work and answer ----------------------------------------------------------------


def test_hundred_thousand_empty_containers_are_refused_with_a_small_answer(app: server.App) -> None:
    pod = seed_pod()
    pod["spec"]["containers"] = [{} for _ in range(100_000)]
    answer = post(app, review_body(pod))
    code, message = refusal(answer)
    assert code == 400
    assert message == (
        f"kube-sts: spec.containers has 100000 entries; kube-sts injects into Pods of at most "
        f"{injection.MAX_CONTAINERS}"
    )
    assert len(answer.body) < 1024


@pytest.mark.parametrize(
    ("change", "field", "count", "limit"),
    [
        (lambda pod, n: pod["spec"].update(initContainers=[{"name": f"i{i}"} for i in range(n)]),
         "spec.initContainers", injection.MAX_CONTAINERS + 1, injection.MAX_CONTAINERS),
        (lambda pod, n: pod["spec"].update(ephemeralContainers=[{"name": f"e{i}"} for i in range(n)]),
         "spec.ephemeralContainers", injection.MAX_CONTAINERS + 1, injection.MAX_CONTAINERS),
        (lambda pod, n: pod["spec"]["containers"][0].update(env=[{"name": f"V{i}"} for i in range(n)]),
         "spec.containers[0].env", injection.MAX_ENTRIES + 1, injection.MAX_ENTRIES),
        (lambda pod, n: pod["spec"]["containers"][0].update(
            volumeMounts=[{"name": f"v{i}", "mountPath": f"/m{i}"} for i in range(n)]),
         "spec.containers[0].volumeMounts", injection.MAX_ENTRIES + 1, injection.MAX_ENTRIES),
        (lambda pod, n: pod["spec"].update(volumes=[{"name": f"v{i}", "emptyDir": {}} for i in range(n)]),
         "spec.volumes", injection.MAX_ENTRIES + 1, injection.MAX_ENTRIES),
    ],
)  # fmt: skip
def test_every_list_the_patch_walks_is_capped(app: server.App, change: Any, field: str, count: int, limit: int) -> None:
    pod = seed_pod()
    change(pod, count)
    code, message = refusal(post(app, review_body(pod)))
    assert (code, message) == (
        400,
        f"kube-sts: {field} has {count} entries; kube-sts injects into Pods of at most {limit}",
    )
    change(pod, limit)  # at the cap the Pod is injected
    patched = patched_pod(post(app, review_body(pod)), pod)
    assert patched["metadata"]["annotations"][injection.MARKER_ANNOTATION] == "aws"


def test_a_role_longer_than_any_relying_party_accepts_is_refused(app: server.App) -> None:
    """The annotation's value is copied into every container: a 256 KiB value would multiply."""
    pod = seed_pod()
    pod["metadata"]["annotations"]["tremolo.io/aws-role"] = "r" * (injection.MAX_VALUE + 1)
    code, message = refusal(post(app, review_body(pod)))
    assert code == 400
    assert message == (
        f"kube-sts: the annotation tremolo.io/aws-role is {injection.MAX_VALUE + 1} characters long; "
        f"at most {injection.MAX_VALUE} are accepted"
    )


def test_the_largest_pod_kube_sts_injects_gets_an_answer_within_the_bound(legacy_app: server.App) -> None:
    """Every capped list at its cap and the longest value: the answer stays below MAX_ANSWER."""
    pod = seed_pod()
    pod["metadata"]["annotations"]["tremolo.io/aws-role"] = "r" * injection.MAX_VALUE
    pod["spec"]["containers"] = [{"name": f"c{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)]
    pod["spec"]["initContainers"] = [{"name": f"i{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)]
    answer = post(legacy_app, review_body(pod))
    patched = patched_pod(answer, pod)
    kubernetes_validate.validate(patched, "1.29", strict=True)
    assert len(answer.body) <= webhook.MAX_ANSWER
    operations = json.loads(base64.b64decode(answer.json()["response"]["patch"]))
    assert len(operations) <= injection.MAX_OPERATIONS
    print(f"largest injectable Pod: {len(operations)} operations, answer {len(answer.body)} bytes")


def test_too_many_operations_are_refused() -> None:
    """Extra variables (configuration) times containers can exceed the operation cap: a clear refusal."""
    rt = runtime()
    [endpoint] = rt.endpoints
    assert endpoint.injector is not None
    extra = {f"EXTRA_{i}": "x" for i in range(40)}
    endpoint = endpoint.model_copy(update={"injector": endpoint.injector.model_copy(update={"extra_env": extra})})
    pod = seed_pod()
    pod["spec"]["containers"] = [{"name": f"c{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)]
    pod["spec"]["initContainers"] = [{"name": f"i{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)]
    with pytest.raises(injection.RefusedError) as caught:
        injection.patch(rt, (endpoint,), pod, CA)
    assert caught.value.code == 400
    assert caught.value.message == (
        f"kube-sts: the patch for this Pod would need more than {injection.MAX_OPERATIONS} operations "
        "(containers times variables to add); set fewer containers or extra variables"
    )


# -- item: malformed input is a clear answer, never a 500 -----------------------------------------


def with_field(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    pod = seed_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    target: Any = pod
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return pod


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("metadata",), "x", "metadata"),
        (("metadata", "labels"), "tremolo.io/aws-role", "metadata.labels"),
        (("metadata", "labels"), 5, "metadata.labels"),
        (("metadata", "labels"), {"tremolo.io/aws-role": 1}, "metadata.labels['tremolo.io/aws-role']"),
        (("metadata", "annotations"), ["tremolo.io/aws-role"], "metadata.annotations"),
        (("metadata", "annotations"), {"tremolo.io/aws-role": {"a": 1}}, "metadata.annotations['tremolo.io/aws-role']"),
        (("spec",), "x", "spec"),
        (("spec", "containers"), "x", "spec.containers"),
        (("spec", "containers"), [5], "spec.containers[0]"),
        (("spec", "containers", 0, "name"), [], "spec.containers[0].name"),
        (("spec", "containers", 0, "env"), {"A": "b"}, "spec.containers[0].env"),
        (("spec", "containers", 0, "env"), [{"name": {}}], "spec.containers[0].env[0].name"),
        (("spec", "containers", 0, "volumeMounts"), [{"name": "a", "mountPath": []}],
         "spec.containers[0].volumeMounts[0].mountPath"),
        (("spec", "containers", 0, "volumeMounts"), [{"name": "a", "mountPath": "/a", "readOnly": "yes"}],
         "spec.containers[0].volumeMounts[0].readOnly"),
        (("spec", "volumes"), [{"name": 3}], "spec.volumes[0].name"),
        (("spec", "securityContext"), "root", "spec.securityContext"),
        (("spec", "securityContext"), {"runAsUser": True}, "spec.securityContext.runAsUser"),
        (("spec", "restartPolicy"), 0, "spec.restartPolicy"),
    ],
)  # fmt: skip
def test_a_malformed_pod_is_refused_naming_the_field(
    app: server.App, path: tuple[str | int, ...], value: Any, where: str
) -> None:
    code, message = refusal(post(app, review_body(with_field(path, value))))
    assert code == 400
    assert message.startswith(f"kube-sts: the Pod is malformed: {where} must be ")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[" * 5000,
        b"[]",
        b'"x"',
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": "x"}).encode(),
        review_body(seed_pod(), uid=7),
        review_body(seed_pod(), kind="Pod"),
        review_body("pod"),
    ],
)
def test_a_malformed_review_is_the_documented_400(app: server.App, body: bytes) -> None:
    answer = post(app, body)
    assert answer.status == 400
    document = answer.json()
    assert set(document) == {"error", "message"} and document["error"] == "bad_request" and document["message"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS: list[tuple[str | int, ...]] = [
    ("metadata",),
    ("metadata", "labels"),
    ("metadata", "labels", "tremolo.io/aws-role"),
    ("metadata", "annotations"),
    ("metadata", "annotations", "tremolo.io/aws-role"),
    ("metadata", "annotations", injection.MARKER_ANNOTATION),
    ("metadata", "annotations", injection.EXCLUDE_ANNOTATION),
    ("metadata", "annotations", injection.INCLUDE_ANNOTATION),
    ("metadata", "annotations", "kube-sts.tremolo.io/token-lifetime"),
    ("metadata", "namespace"),
    ("spec",),
    ("spec", "serviceAccountName"),
    ("spec", "containers"),
    ("spec", "containers", 0),
    ("spec", "containers", 0, "name"),
    ("spec", "containers", 0, "env"),
    ("spec", "containers", 0, "env", 0),
    ("spec", "containers", 0, "env", 0, "name"),
    ("spec", "containers", 0, "volumeMounts"),
    ("spec", "containers", 0, "volumeMounts", 0),
    ("spec", "containers", 0, "volumeMounts", 0, "name"),
    ("spec", "containers", 0, "volumeMounts", 0, "mountPath"),
    ("spec", "containers", 0, "volumeMounts", 0, "readOnly"),
    ("spec", "initContainers"),
    ("spec", "ephemeralContainers"),
    ("spec", "volumes"),
    ("spec", "volumes", 0),
    ("spec", "volumes", 0, "name"),
    ("spec", "securityContext"),
    ("spec", "securityContext", "runAsUser"),
    ("spec", "restartPolicy"),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=3))
def test_arbitrary_json_in_pod_fields_is_answered_200_or_400(
    app: server.App, changes: list[tuple[tuple[str | int, ...], Any]]
) -> None:
    pod = with_field(("spec", "restartPolicy"), "Always")
    for path, value in changes:
        target: Any = pod
        for key in path[:-1]:
            if isinstance(target, dict) and isinstance(key, str):
                target = target.get(key)
            elif isinstance(target, list) and isinstance(key, int) and key < len(target):
                target = target[key]
            else:
                target = None
                break
        key = path[-1]
        dict_key = isinstance(target, dict) and isinstance(key, str)
        list_index = isinstance(target, list) and isinstance(key, int) and key < len(target)
        if dict_key or list_index:
            target[key] = value
    original = copy.deepcopy(pod)
    answer = post(app, review_body(pod))
    assert answer.status in (200, 400), answer.body[:300]
    if answer.status == 200 and answer.json()["response"]["allowed"]:
        patched_pod(answer, original)  # an allowed Pod's patch applies


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["apiVersion", "kind", "request", "request.uid", "request.kind", "request.object"]),
    value=JSON,
)
def test_arbitrary_json_in_review_fields_is_answered_200_or_400(app: server.App, field: str, value: Any) -> None:
    document = json.loads(review_body(seed_pod()))
    *parents, key = field.split(".")
    target = document
    for parent in parents:
        target = target[parent]
    target[key] = value
    answer = post(app, json.dumps(document).encode())
    assert answer.status in (200, 400), answer.body[:300]
    if answer.status == 400:
        assert answer.json()["error"] == "bad_request"


# -- item: Pods that collide with the injection ---------------------------------------------------


@pytest.mark.parametrize("name", ["kube-sts-aws-token", "kube-sts-aws-sa"])
def test_a_pod_with_a_volume_named_like_ours_is_refused(app: server.App, name: str) -> None:
    pod = seed_pod()
    pod["spec"]["volumes"] = [{"name": name, "emptyDir": {}}]
    code, message = refusal(post(app, review_body(pod)))
    assert (code, message) == (
        422,
        f"kube-sts: spec.volumes[0] is named {name!r}, a name kube-sts reserves for endpoint 'aws'; rename the volume",
    )


def test_a_pod_with_a_container_named_like_our_init_container_is_refused(legacy_app: server.App) -> None:
    pod = seed_pod()
    pod["spec"]["initContainers"] = [{"name": "kube-sts-aws-init", "image": "busybox"}]
    code, message = refusal(post(legacy_app, review_body(pod)))
    assert (code, message) == (
        422,
        "kube-sts: spec.initContainers[0] is named 'kube-sts-aws-init', a name kube-sts reserves for endpoint "
        "'aws'; rename the container",
    )


def test_volumes_with_other_names_are_injected_around(app: server.App) -> None:
    pod = seed_pod()
    pod["spec"]["volumes"] = [{"name": "kube-sts-aws-tokens", "emptyDir": {}}, {"name": "kube-sts-aws", "emptyDir": {}}]
    patched = patched_pod(post(app, review_body(pod)), pod)
    for version in ("1.29", "1.33"):
        kubernetes_validate.validate(patched, version, strict=True)
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert names == ["kube-sts-aws-tokens", "kube-sts-aws", "kube-sts-aws-token", "kube-sts-aws-sa"]


@pytest.mark.parametrize("field", ["containers", "initContainers"])
@pytest.mark.parametrize("read_only", [False, None])
def test_a_container_that_mounts_our_token_volume_writable_is_refused(
    app: server.App, field: str, read_only: bool | None
) -> None:
    """Already injected (a second webhook added the container, or a reinvocation): refused all the same."""
    injected = patched_pod(post(app, review_body(seed_pod())), seed_pod())
    mount: dict[str, Any] = {"name": "kube-sts-aws-token", "mountPath": "/elsewhere"}
    if read_only is not None:
        mount["readOnly"] = read_only
    injected["spec"].setdefault(field, []).append({"name": "writer", "image": "busybox", "volumeMounts": [mount]})
    index = len(injected["spec"][field]) - 1
    code, message = refusal(post(app, review_body(injected)))
    assert (code, message) == (
        422,
        f"kube-sts: spec.{field}[{index}] ('writer') mounts the token volume 'kube-sts-aws-token' without "
        "readOnly: true; only the kube-sts sidecar may write the token",
    )
    mount["readOnly"] = True
    # read-only: admitted, and the added container gets what it lacks (the reinvocation case)
    completed = patched_pod(post(app, review_body(injected)), injected)
    writer = completed["spec"][field][index]
    assert writer["volumeMounts"][0] == mount and "AWS_ROLE_ARN" in {v["name"] for v in writer["env"]}
    completed["spec"][field][index] = injected["spec"][field][index]
    assert completed == injected  # nothing else changed


def test_an_excluded_container_that_mounts_our_token_volume_writable_is_refused(app: server.App) -> None:
    pod = seed_pod()
    pod["metadata"]["annotations"][injection.EXCLUDE_ANNOTATION] = "aws-cli"
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "kube-sts-aws-token", "mountPath": "/t"}]
    code, message = refusal(post(app, review_body(pod)))
    assert code == 422 and "'aws-cli'" in message and "readOnly: true" in message
