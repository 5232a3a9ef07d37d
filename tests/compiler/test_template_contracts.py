"""Templates take every contract value from ``runtime.config`` (the render context's ``contract``).

A path, UID, port, flag or label key the runtime relies on is written once, in config.py; a
template that spells one out would let the manifests and the runtime drift apart.
"""

from __future__ import annotations

import importlib.resources

import pytest

from kube_sts.runtime import config

LITERALS = [
    config.CONFIG_DIR,
    config.CONFIG_FILE,
    config.KEYSET_FILE,
    *config.TLS_FILES,
    str(config.RUN_AS_UID),
    *config.SERVER_COMMAND,
    config.HEALTH_PATH,
    config.READY_PATH,
    config.WEBHOOK_PATH,
    config.LABEL_DOMAIN,
    config.TLS_SECRET_LABEL,
    config.APP_LABEL_PREFIX,
]
TEMPLATES = sorted(
    resource.name
    for resource in importlib.resources.files("kube_sts.templates").iterdir()
    if resource.name.endswith(".j2")
)


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_template_spells_out_a_contract_value(template: str) -> None:
    text = importlib.resources.files("kube_sts.templates").joinpath(template).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("#", "{#")))
    assert [literal for literal in LITERALS if literal in code] == []
