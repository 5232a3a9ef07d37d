"""A whole OpenUnison values file: what kube-sts takes from it and what it leaves to OpenUnison.

OpenUnison users deploy its STS (the ``openunison-kube-sts`` chart) with the same values file as
the rest of OpenUnison (``ouctl install-auth-portal ... values.yaml``). kube-sts reads that file
as it is:

- ``k8s_cluster_name`` (top level) is the cluster name: OpenUnison's ``sub`` is
  ``<k8s_cluster_name>:<namespace>:<serviceaccount>``, so it becomes ``sts.cluster`` when that is
  not set (both set and different is an error: one of them would change ``sub``);
- the sections only OpenUnison reads (``SECTIONS`` at the top level, ``STS_SECTIONS`` under
  ``sts:``) are ignored, each with one informational line;
- ``sts.image`` naming OpenUnison's token sidecar (``.../openunison-cli``, the chart's default)
  is ignored with one informational line: kube-sts replaces that sidecar and runs its own image.
  Any other string is kube-sts's own image reference (``repository[:tag][@digest]``).

Every other key is checked as strictly as in any values file, so a typo still gets "did you mean".
In such a file an endpoint whose key set is ``managed`` gets a warning (``rekeys``): kube-sts
would make a new key, and the relying parties trust OpenUnison's.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kube_sts.compiler import values

__all__ = ["SECTIONS", "STS_SECTIONS", "Note", "is_openunison_image", "rekeys", "split"]

SECTIONS = frozenset(
    {
        "active_directory",
        "amq_image",
        "cert_template",
        "cert_update_image",
        "certs",
        "dashboard",
        "database",
        "enable_impersonation",
        "github",
        "image",
        "impersonation",
        "monitoring",
        "myvd_config_path",
        "myvd_configmap",
        "network",
        "network_policies",
        "oidc",
        "openunison",
        "saml",
        "services",
        "smtp",
        "trusted_certs",
    }
)
"""Top-level sections of OpenUnison's ``orchestra`` chart and its login portals."""
STS_SECTIONS = frozenset({"openunison"})
"""Keys of the ``openunison-kube-sts`` chart's ``sts:`` section that only OpenUnison reads
(``sts.openunison`` names the OpenUnison Service its webhook ran behind)."""
CLUSTER_NAME = "k8s_cluster_name"
OPENUNISON_IMAGE = "openunison-cli"


@dataclasses.dataclass(frozen=True)
class Note:
    """An informational line about a key at ``loc``."""

    loc: tuple[str | int, ...]
    message: str
    code: str = "openunison-ignored"


def is_openunison_image(value: object) -> bool:
    """Whether ``value`` names OpenUnison's token sidecar image (``<registry>/.../openunison-cli[:tag]``)."""
    if not isinstance(value, str):
        return False
    name = value.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name == OPENUNISON_IMAGE


def split(document: dict[str, Any]) -> tuple[dict[str, Any], list[Note]]:
    """``document`` without OpenUnison's own sections, and one note for each section left out."""
    notes: list[Note] = []
    kept: dict[str, Any] = {}
    for key, value in document.items():
        if key in SECTIONS:
            notes.append(Note((key,), "an OpenUnison setting kube-sts does not use; ignored"))
        else:
            kept[key] = value
    sts = kept.get("sts")
    if isinstance(sts, dict):
        inner: dict[str, Any] = {}
        for key, value in sts.items():
            if key in STS_SECTIONS:
                notes.append(Note(("sts", key), "an OpenUnison setting kube-sts does not use; ignored"))
            elif key == "image" and is_openunison_image(value):
                notes.append(
                    Note(
                        ("sts", key),
                        f"{value!r} is OpenUnison's token sidecar, which kube-sts replaces; ignored (kube-sts runs its "
                        "own image: set sts.image to a kube-sts image reference to pin another one)",
                    )
                )
            else:
                inner[key] = value
        kept["sts"] = inner
    return kept, notes


def rekeys(sts: values.Sts) -> list[values.Conflict]:
    """Endpoints of an OpenUnison values file that would sign with a new key instead of OpenUnison's."""
    from kube_sts.compiler import values  # noqa: PLC0415 - values imports nothing from here

    return [
        values.Conflict(
            ("sts", "endpoints", index, "issuer", "keypair"),
            f"OpenUnison signed this endpoint's tokens with its key pair {endpoint.issuer.keypair!r}, but this key set "
            "is managed: kube-sts would make a new key, and relying parties trust only the old one until you publish "
            "the new one. Import the key pair (sts-compile keys import-openunison) and set issuer.keys.mode: provided",
            "openunison-rekey",
        )
        for index, endpoint in enumerate(sts.endpoints)
        if endpoint.issuer.keys.mode == "managed"
    ]
