"""``sts-compile trust``: the relying parties' trust documents for a values file, on stdout.

Offline and deterministic: the same values and options give the same bytes. Exit codes: 0 ok,
1 invalid values or documents that cannot be generated (positioned diagnostics on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from kube_sts.compiler import diagnostics, source, values
from kube_sts.compiler.trust import aws, azure, gcp, subjects, vault
from kube_sts.runtime import config

__all__ = ["RELYING_PARTIES", "load", "main", "relying_party"]

RELYING_PARTIES = ("aws", "azure", "gcp", "vault")
AZURE_AUDIENCE = "api://AzureADTokenExchange"
AWS_AUDIENCES = ("sts.amazonaws.com", "sts.aws.com")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: error: {message}")


def relying_party(endpoint: config.Endpoint, given: str | None = None) -> str | None:
    """``given``, else the endpoint's preset, else what its audience and injector say (None: cannot tell)."""
    if given is not None:
        return given
    if endpoint.preset != "generic":
        return endpoint.preset
    if endpoint.audience == AZURE_AUDIENCE:
        return "azure"
    if endpoint.audience.startswith("https://iam.googleapis.com/"):
        return "gcp"
    if endpoint.aws_style or endpoint.audience in AWS_AUDIENCES:
        return "aws"
    return None


def _service_account(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return namespace, name


def _parser() -> _Parser:
    parser = _Parser(
        prog="sts-compile trust", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("values", help="the values file ('-' for stdin)")
    parser.add_argument("--endpoint", metavar="NAME", help="one endpoint (default: every endpoint)")
    parser.add_argument(
        "--for",
        dest="relying_party",
        choices=RELYING_PARTIES,
        help="the relying party (default: the endpoint's preset, else its audience and injector)",
    )
    parser.add_argument(
        "--format",
        choices=("json", "shell"),
        default="json",
        help="json: the documents; shell: the aws/az/gcloud/vault commands that create them",
    )
    parser.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="VALUE",
        help="a role (the Pod's annotation, e.g. an IAM role ARN) to write trust for; repeatable",
    )
    parser.add_argument(
        "--service-account",
        action="append",
        default=[],
        type=_service_account,
        metavar="NAMESPACE/NAME",
        help="Azure: a ServiceAccount the rules authorize; repeatable",
    )
    parser.add_argument("--bucket", help="AWS: the issuer documents' S3 bucket (with --distribution-id)")
    parser.add_argument("--distribution-id", help="AWS: the CloudFront distribution in front of the bucket")
    parser.add_argument(
        "--gcp-provider",
        metavar="NAME",
        help="Google: projects/N/locations/global/workloadIdentityPools/POOL/providers/ID",
    )
    parser.add_argument("--gcp-service-account", metavar="EMAIL", help="Google: a service account to impersonate")
    parser.add_argument("--vault-mount", metavar="PATH", help="Vault: the JWT auth mount (default kube-sts-<endpoint>)")
    parser.add_argument("--vault-role", metavar="NAME", help="Vault: the role name (default: the endpoint's name)")
    parser.add_argument("--vault-policy", action="append", default=[], metavar="NAME", help="Vault: token policies")
    parser.add_argument("--vault-ttl", metavar="DURATION", help="Vault: token TTL (default: the token lifetime)")
    parser.add_argument(
        "--keyset", metavar="FILE", help="Vault: jwt_validation_pubkeys from this key set file instead of jwks_url"
    )
    return parser


def load(path: str, err: TextIO) -> tuple[str, str, values.Values] | int:
    """``(name, text, model)`` of the values file, or the exit code after reporting why not."""
    name = "<stdin>" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else pathlib.Path(path).read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        err.write(f"sts-compile: error: cannot read {name}: {exc.strerror}\n")
        return 2
    except UnicodeDecodeError as exc:
        err.write(f"{name}:1:1: error: the file is not UTF-8 ({exc.reason} at byte {exc.start}) [encoding]\n")
        return 1
    try:
        model = source.check(text).model
    except diagnostics.ValuesError as exc:
        err.write(diagnostics.render(exc.diagnostics, name, text))
        return 1
    return name, text, model


def endpoints(model: values.Values, wanted: str | None) -> list[tuple[int, config.Endpoint]]:
    found = [(i, e) for i, e in enumerate(model.sts.endpoints) if wanted is None or e.name == wanted]
    if not found:
        names = ", ".join(e.name for e in model.sts.endpoints)
        raise UsageError(f"sts-compile trust: error: no endpoint {wanted!r} (the values have {names})")
    return found


def _generate(args: argparse.Namespace, model: values.Values, index: int, endpoint: config.Endpoint) -> dict[str, Any]:
    party = relying_party(endpoint, args.relying_party)
    cluster = model.sts.cluster
    role = args.role[0] if args.role else None
    if party is None:
        raise subjects.TrustError(
            ("sts", "endpoints", index, "audience"),
            f"cannot tell the relying party from the audience {endpoint.audience!r}; say it with --for "
            + "|".join(RELYING_PARTIES),
            "relying-party",
        )
    if party == "aws":
        document = aws.document(
            endpoint, cluster, args.role, index=index, bucket=args.bucket, distribution_id=args.distribution_id
        )
    elif party == "azure":
        document = {
            "federatedIdentityCredentials": azure.credentials(endpoint, cluster, args.service_account, role, index)
        }
    elif party == "gcp":
        document = gcp.document(
            endpoint,
            cluster,
            provider=args.gcp_provider,
            role=role,
            service_account=args.gcp_service_account,
            index=index,
        )
    else:
        ttl = config.parse_duration(args.vault_ttl) if args.vault_ttl else None
        document = vault.document(
            endpoint,
            cluster,
            mount=args.vault_mount,
            keyset_path=args.keyset,
            name=args.vault_role,
            policies=args.vault_policy,
            ttl=ttl,
            role=role,
            index=index,
        )
    return {"relyingParty": party, **document}


_SHELL = {"aws": aws.shell, "gcp": gcp.shell, "vault": vault.shell}


def _shell(name: str, document: dict[str, Any]) -> str:
    party = document["relyingParty"]
    heading = f"# endpoint {name} ({party})\n"
    if party == "azure":
        return heading + azure.shell(document["federatedIdentityCredentials"])
    return heading + _SHELL[party](document)


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    try:
        args = _parser().parse_args(list(argv))
        if (args.bucket is None) != (args.distribution_id is None):
            raise UsageError("sts-compile trust: error: --bucket and --distribution-id go together")
    except UsageError as exc:
        stderr.write(f"{exc}\n")
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    loaded = load(args.values, stderr)
    if isinstance(loaded, int):
        return loaded
    name, text, model = loaded
    try:
        chosen = endpoints(model, args.endpoint)
    except UsageError as exc:
        stderr.write(f"{exc}\n")
        return 2
    documents: dict[str, Any] = {}
    problems: list[diagnostics.Diagnostic] = []
    for index, endpoint in chosen:
        try:
            documents[endpoint.name] = _generate(args, model, index, endpoint)
        except subjects.TrustError as exc:
            problems.append(source.positioned(text, exc.loc, exc.message, exc.code))
        except (OSError, ValueError) as exc:
            problems.append(diagnostics.Diagnostic(1, 1, "", str(exc), "input"))
    if problems:
        stderr.write(diagnostics.render(sorted(set(problems)), name, text))
        return 1
    if args.format == "json":
        stdout.write(json.dumps(documents, indent=2, sort_keys=True) + "\n")
    else:
        stdout.write("\n".join(_shell(n, d) for n, d in documents.items()))
    return 0
