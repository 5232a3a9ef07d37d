"""`sts-compile keys ...` and `sts-compile issuer-docs ...`: key set files and issuer documents.

Everything works offline except ``issuer-docs --url``. Key set files are written atomically with
mode 0600. Only ``keys secret`` prints private key material, and it says so on stderr.
Exit codes: 0 ok, 1 invalid input, 2 usage error; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from cryptography.hazmat.primitives import serialization

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.tokens import issuer

__all__ = ["main"]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_SIGN_FOR = "365d"
DEFAULT_LEAD = "1d"
DEFAULT_LIFETIME = "1h"


class InputError(Exception):
    """Invalid input: reported on stderr with exit code 1."""


class UsageError(Exception):
    """Bad command line: reported on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


def _duration(value: str) -> int:
    try:
        seconds = config.parse_duration(value if not value.isdigit() else int(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return int(seconds)


def _name(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > 253 or not pattern.match(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return value

    return check


def _read(path: str) -> keyset.KeySet:
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return keyset.loads(data)
    except keyset.KeySetError as exc:
        raise InputError(f"{path}: {exc}") from None


def _write(path: str, keys: keyset.KeySet, *, overwrite: bool) -> None:
    """Atomically write a key set file readable by its owner only."""
    target = pathlib.Path(path)
    if not overwrite and target.exists():
        raise InputError(f"{path}: already exists; use `keys add` to add a key, or --force to replace it")
    directory = target.parent if str(target.parent) else pathlib.Path(".")
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(keyset.dumps(keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _now(args: argparse.Namespace) -> int:
    if args.now is not None and args.now < 0:
        raise UsageError(f"sts-compile: --now {args.now}: expected epoch seconds (a non-negative integer)")
    return int(args.now) if args.now is not None else int(time.time())


def _generate(algorithm: str, created: int, sign_from: int, sign_until: int, bits: int) -> keyset.Key:
    try:
        return keyset.generate(algorithm, created=created, sign_from=sign_from, sign_until=sign_until, rsa_bits=bits)
    except keyset.KeySetError as exc:
        raise InputError(str(exc)) from None


def _create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    now = _now(args)
    key = _generate(args.algorithm, now, now, now + args.sign_for, args.rsa_bits)
    _write(args.output, keyset.KeySet((key,), args.endpoint), overwrite=args.force)
    err.write(f"{args.output}: created key set for endpoint {args.endpoint} with {key.kid} ({key.algorithm})\n")
    return 0


def _openunison_key(path: str) -> tuple[str, keyset.PrivateKey]:
    """The name and RSA private key of an OpenUnison key pair Secret (``kubernetes.io/tls``), as
    ``kubectl get secret <name> -o yaml`` (or ``-o json``) prints it; ``tls.crt``, when present,
    must hold the same public key."""
    import ruamel.yaml  # noqa: PLC0415 - only this command reads YAML
    import ruamel.yaml.error  # noqa: PLC0415
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    origin = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{origin}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{origin}: not a Secret manifest (the file is not UTF-8)") from None
    try:
        document = ruamel.yaml.YAML(typ="safe", pure=True).load(text)
    except (ruamel.yaml.error.YAMLError, ValueError) as exc:
        raise InputError(f"{origin}: not a Secret manifest: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict) or document.get("kind") != "Secret":
        raise InputError(f"{origin}: expected a Secret (kubectl -n openunison get secret <keypair> -o yaml)")
    name = str((document.get("metadata") or {}).get("name", "?"))
    if document.get("type") != "kubernetes.io/tls":
        raise InputError(
            f"{origin}: Secret {name} has type {document.get('type')!r}; OpenUnison keeps a key pair in a "
            "Secret of type kubernetes.io/tls (the one named by sts.endpoints[].issuer.keypair)"
        )
    data = document.get("data") or {}
    if not isinstance(data, dict) or not isinstance(data.get("tls.key"), str):
        raise InputError(f"{origin}: Secret {name} has no data.tls.key")

    def decoded(field: str) -> bytes:
        try:
            return base64.b64decode(data[field], validate=True)
        except ValueError:
            raise InputError(f"{origin}: Secret {name}: data.{field} is not base64") from None

    try:
        private = serialization.load_pem_private_key(decoded("tls.key"), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{origin}: Secret {name}: tls.key is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise InputError(f"{origin}: Secret {name}: tls.key is not an RSA key; OpenUnison signs its STS tokens RS256")
    if isinstance(data.get("tls.crt"), str) and data["tls.crt"]:
        try:
            certificate = x509.load_pem_x509_certificate(decoded("tls.crt"))
        except ValueError as exc:
            raise InputError(f"{origin}: Secret {name}: tls.crt is not a PEM certificate ({exc})") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if certificate.public_key().public_bytes(
            serialization.Encoding.DER, public
        ) != private.public_key().public_bytes(serialization.Encoding.DER, public):
            raise InputError(f"{origin}: Secret {name}: tls.crt and tls.key are not one key pair")
    return name, private


def _import_openunison(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    name, private = _openunison_key(args.secret)
    now = _now(args)
    try:
        key = keyset.Key(
            kid=keyset.thumbprint(private),
            algorithm="RS256",
            created=now,
            sign_from=now,
            sign_until=now + args.sign_for,
            private_key=private,
        )
    except keyset.KeySetError as exc:
        raise InputError(f"{args.secret}: Secret {name}: {exc}") from None
    _write(args.output, keyset.KeySet((key,), args.endpoint), overwrite=args.force)
    err.write(
        f"{args.output}: imported OpenUnison's key pair {name} ({private.key_size}-bit RSA) for endpoint "
        f"{args.endpoint} as {key.kid} (RS256), signing from now until {key.sign_until}. kid: OpenUnison's JWKS named "
        "this key after its certificate; kube-sts names it by its RFC 7638 thumbprint. OpenUnison's tokens carry "
        "no kid, so they keep verifying while the published JWKS holds this key alone\n"
    )
    return 0


def _handover(current: keyset.KeySet, now: int, lead: int) -> tuple[int, list[keyset.Key], list[keyset.Key]]:
    """When a key added at ``now`` with ``lead`` signs, and the other keys around it.

    The new key signs from ``start = now + lead``. Keys that sign before it (now or later) hand
    over then and stay in their window for one more lead, never past their own ``signUntil``:
    a fallback while the issuer does not serve the new key yet. If they would all stop before
    ``start``, the last of them signs until ``start``, so signing has no gap. Keys scheduled to
    sign from ``start`` on or later are superseded and dropped (they never signed, so no token
    carries them). With ``lead`` 0, a key whose window opened this very second is moved one second
    back, so that the new key signs now, as asked.

    Returns (start, kept keys, dropped keys).
    """
    start = now + lead
    handover = start + lead
    kept: list[keyset.Key] = []
    before: list[keyset.Key] = []
    dropped: list[keyset.Key] = []
    for old in current.keys:
        if old.sign_until <= now:
            kept.append(old)  # already retired
        elif old.sign_from < start or old.sign_from <= now:
            until = min(old.sign_until, handover)
            before.append(old.replace(sign_from=min(old.sign_from, until - 1), sign_until=until))
        else:
            dropped.append(old)
    if before:
        last = max(before, key=lambda key: (key.sign_until, key.sign_from, key.kid))
        if last.sign_until < start:
            before[before.index(last)] = last.replace(sign_until=start)
    return start, kept + before, dropped


def _add(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    current = _read(args.file)
    now = _now(args)
    if now + args.lead == 0:
        raise InputError("--now 0 with --lead 0: the new key cannot sign before the epoch's first second")
    start, keys, dropped = _handover(current, now, args.lead)
    algorithm = args.algorithm or (current.keys[-1].algorithm if current.keys else "RS256")
    key = _generate(algorithm, now, start, start + args.sign_for, args.rsa_bits)
    updated = _changed(args.file, current, [*keys, key])
    _write(args.file, updated, overwrite=True)
    for old in dropped:
        err.write(f"{args.file}: dropped {old.kid}: it was to sign from {old.sign_from}, {key.kid} supersedes it\n")
    when = "signs now" if start <= now else f"signs from {start}"
    err.write(
        f"{args.file}: added {key.kid} ({key.algorithm}), published from now, {when}; "
        "upload the issuer documents before then (sts-compile issuer-docs)\n"
    )
    return 0


def _changed(path: str, current: keyset.KeySet, keys: Sequence[keyset.Key]) -> keyset.KeySet:
    """``current`` holding ``keys``, or an ``InputError`` saying why the set cannot hold them."""
    try:
        return current.with_keys(keys)
    except keyset.KeySetError as exc:
        raise InputError(f"{path}: cannot change the key set: {exc}") from None


def _retire(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    current = _read(args.file)
    target = current.get(args.kid)
    if target is None:
        raise InputError(f"{args.file}: no key with kid {args.kid!r}")
    now = _now(args)
    if args.remove:
        keys = [key for key in current.keys if key.kid != args.kid]
        message = f"removed {args.kid}: tokens it signed stop verifying once relying parties refetch the JWKS"
    elif target.sign_from > now:  # it never signed: nothing to keep published
        keys = [key for key in current.keys if key.kid != args.kid]
        message = f"removed {args.kid}: it was to sign from {target.sign_from} and never signed a token"
    elif target.sign_until <= now:
        err.write(f"{args.file}: {args.kid} already stopped signing at {target.sign_until}; nothing to change\n")
        return 0
    else:
        until = max(now, target.sign_from + 1)
        keys = [key.replace(sign_until=until) if key.kid == args.kid else key for key in current.keys]
        message = f"retired {args.kid}: stops signing at {until}; stays published until its tokens expire"
    updated = _changed(args.file, current, keys)
    try:
        updated.signing_key(now)
    except keyset.KeySetError as exc:
        if not args.force:
            raise InputError(f"{args.file}: refusing, {exc}; add a key first (`keys add`) or pass --force") from None
    _write(args.file, updated, overwrite=True)
    err.write(f"{args.file}: {message}\n")
    return 0


def _prune(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    current = _read(args.file)
    now = _now(args)
    keep = current.published(now, args.token_lifetime + keyset.CLOCK_SKEW)
    for key in current.keys:
        if key not in keep:
            err.write(f"{args.file}: pruned {key.kid} (stopped signing at {key.sign_until})\n")
    _write(args.file, current.with_keys(keep), overwrite=True)
    return 0


def _state(key: keyset.Key, signing: str | None, now: int) -> str:
    if key.kid == signing:
        return "signing"
    if key.sign_from > now:
        return "next"
    if key.sign_until <= now:
        return "retired"
    return "standby"


def _show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    current = _read(args.file)
    now = _now(args)
    try:
        signing: str | None = current.signing_key(now).kid
    except keyset.KeySetError as exc:
        signing = None
        err.write(f"{args.file}: warning: {exc}\n")
    document = {
        "endpoint": current.endpoint,
        "now": now,
        "keys": [
            {
                "kid": key.kid,
                "alg": key.algorithm,
                "state": _state(key, signing, now),
                "created": key.created,
                "signFrom": key.sign_from,
                "signUntil": key.sign_until,
                "publicJwk": key.public_jwk(),
            }
            for key in current.keys
        ],
    }
    out.write(json.dumps(document, indent=2) + "\n")
    return 0


def _secret(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    current = _read(args.file)
    data = base64.b64encode(keyset.dumps(current)).decode("ascii")
    labels = ["app.kubernetes.io/name: kube-sts", "app.kubernetes.io/component: keys"]
    if current.endpoint is not None:
        labels.append(f"kube-sts.io/endpoint: {current.endpoint}")
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {args.name}",
        f"  namespace: {args.namespace}",
        "  labels:",
        *(f"    {label}" for label in labels),
        "type: Opaque",
        "data:",
        f"  keyset.json: {data}",
    ]
    err.write(
        "warning: this manifest contains private signing keys; pipe it to kubeseal or kubectl, "
        "never commit or paste it\n"
    )
    out.write("\n".join(lines) + "\n")
    return 0


def _serialized(discovery: Any, jwks: Any) -> dict[str, bytes]:
    """The files of the issuer layout (path relative to the issuer's root -> bytes)."""
    return {
        relative: (json.dumps(document, indent=2) + "\n").encode()
        for relative, document in ((".well-known/openid-configuration", discovery), ("certs", jwks))
    }


def _write_documents(directory: str, discovery: Any, jwks: Any) -> None:
    root = pathlib.Path(directory)
    (root / ".well-known").mkdir(parents=True, exist_ok=True)
    for relative, data in _serialized(discovery, jwks).items():
        (root / relative).write_bytes(data)


def _check_documents(origin: str, documents: Any) -> tuple[Any, Any]:
    if not isinstance(documents, dict) or not isinstance(documents.get("discovery"), dict):
        raise InputError(f"{origin}: expected {{'discovery': {{...}}, 'keys': {{'keys': [...]}}}}")
    jwks = documents.get("keys")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InputError(f"{origin}: the issuer documents carry no keys")
    for entry in jwks["keys"]:
        if not isinstance(entry, dict) or "d" in entry or "kid" not in entry:
            raise InputError(f"{origin}: every JWKS entry must be a public key with a kid")
    issuer_url = documents["discovery"].get("issuer")
    if not isinstance(issuer_url, str) or not issuer_url.startswith("https://") or issuer_url.endswith("/"):
        raise InputError(f"{origin}: the discovery document's issuer {issuer_url!r} is not an https URL")
    if documents["discovery"].get("jwks_uri") != f"{issuer_url}/certs":
        raise InputError(f"{origin}: jwks_uri must be {issuer_url}/certs, the layout `aws s3 sync` uploads")
    return documents["discovery"], jwks


def _fetch(url: str, cafile: str | None) -> Any:
    if not url.startswith("https://"):
        raise InputError(f"{url}: use the https URL of the endpoint's issuer-docs route")
    context = ssl.create_default_context(cafile=cafile)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return json.loads(response.read(4 << 20))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"{url}: cannot fetch the issuer documents: {exc}") from None


def _load_documents(path: str) -> Any:
    origin = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as exc:
        raise InputError(f"{origin}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{origin}: not JSON ({exc})") from None


def _offline_documents(args: argparse.Namespace) -> Any:
    """What the endpoint's ``issuer-docs`` route answers, from the key set file alone."""
    if args.host is None:
        raise UsageError("sts-compile issuer-docs: --keyset needs --host (the issuer host, e.g. d1234.cloudfront.net)")
    current = _read(args.keyset)
    now = _now(args)
    published = current.published(now, args.token_lifetime + keyset.CLOCK_SKEW)
    predecessor = _handing_over(current, now)
    if predecessor is not None and predecessor not in published:
        published = (predecessor, *published)
    if not published:
        raise InputError(f"{args.keyset}: no key is published at {now}; add one with `sts-compile keys add`")
    if not config.is_host_name(args.host):
        raise InputError(f"--host {args.host!r} is not a host name (no scheme, port or path)")
    return issuer.issuer_docs(
        args.host, [key.public_jwk() for key in published], aws_session_tags=args.aws_session_tags
    )


def _handing_over(current: keyset.KeySet, now: int) -> keyset.Key | None:
    """The key that hands over to the one scheduled to sign now (its window reaches that key's
    start). A runtime that waits for publication keeps signing with it until the issuer serves the
    new key, however late that upload is, so the documents keep it until `keys prune` drops it."""
    try:
        scheduled = current.signing_key(now)
    except keyset.KeySetError:
        return None
    before = [key for key in current.keys if key.sign_from < scheduled.sign_from <= key.sign_until]
    return max(before, key=lambda key: (key.sign_from, key.kid), default=None)


def _issuer_docs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.url is not None:
        discovery, jwks = _check_documents(args.url, _fetch(args.url, args.cacert))
    elif args.documents is not None:
        discovery, jwks = _check_documents(args.documents, _load_documents(args.documents))
    else:
        discovery, jwks = _check_documents(args.keyset, _offline_documents(args))
    kids = ", ".join(entry["kid"] for entry in jwks["keys"])
    if args.output is None and args.s3_bucket is None:
        raise UsageError("sts-compile issuer-docs: give -o DIR, --s3-bucket BUCKET or both")
    if args.cloudfront_distribution is not None and args.s3_bucket is None:
        raise UsageError("sts-compile issuer-docs: --cloudfront-distribution needs --s3-bucket")
    if args.output is not None:
        _write_documents(args.output, discovery, jwks)
        err.write(f"{args.output}: wrote .well-known/openid-configuration and certs (kids {kids})\n")
    if args.s3_bucket is not None:
        from kube_sts.compiler import publish  # noqa: PLC0415 - boto3 only when uploading

        try:
            result = publish.publish(args.s3_bucket, _serialized(discovery, jwks), args.cloudfront_distribution)
        except publish.PublishError as exc:
            raise InputError(f"s3://{args.s3_bucket}: {exc}") from None
        for key in result.changed:
            err.write(f"s3://{args.s3_bucket}/{key}: uploaded (kids {kids})\n")
        for key in result.unchanged:
            err.write(f"s3://{args.s3_bucket}/{key}: unchanged\n")
        if result.invalidation is not None:
            paths = " ".join("/" + key for key in result.changed)
            err.write(f"cloudfront {args.cloudfront_distribution}: invalidation {result.invalidation} of {paths}\n")
    return 0


def _parser() -> _Parser:
    parser = _Parser(prog="sts-compile", description="Key sets and issuer documents for kube-sts endpoints.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _keys_parser(commands.add_parser("keys", help="create and change key set files (offline)"))
    _docs_parser(commands.add_parser("issuer-docs", help="write .well-known/openid-configuration and certs"))
    return parser


_NOW: dict[str, Any] = {"type": int, "default": None, "help": "the current time in epoch seconds (default: the clock)"}


def _keys_parser(keys: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    now = _NOW

    create = actions.add_parser("create", help="write a new key set file with one signing key")
    create.add_argument("--endpoint", required=True, type=_name(_DNS_LABEL, "an endpoint name (DNS label)"))
    create.add_argument("--algorithm", choices=keyset.ALGORITHMS, default="RS256")
    create.add_argument("--sign-for", type=_duration, default=DEFAULT_SIGN_FOR, help="signing window (default 365d)")
    create.add_argument("--rsa-bits", type=int, default=keyset.MIN_RSA_BITS)
    create.add_argument("-o", "--output", required=True, help="key set file to write")
    create.add_argument("--force", action="store_true", help="replace an existing file")
    create.add_argument("--now", **now)
    create.set_defaults(run=_create)

    add = actions.add_parser("add", help="add a key that signs after the publication lead time")
    add.add_argument("file")
    add.add_argument("--algorithm", choices=keyset.ALGORITHMS, default=None, help="default: the newest key's")
    add.add_argument("--lead", type=_duration, default=DEFAULT_LEAD, help="publication lead (default 1d)")
    add.add_argument("--sign-for", type=_duration, default=DEFAULT_SIGN_FOR, help="signing window (default 365d)")
    add.add_argument("--rsa-bits", type=int, default=keyset.MIN_RSA_BITS)
    add.add_argument("--now", **now)
    add.set_defaults(run=_add)

    retire = actions.add_parser("retire", help="stop signing with a key (it stays published until its tokens expire)")
    retire.add_argument("kid")
    retire.add_argument("file")
    retire.add_argument("--remove", action="store_true", help="remove it at once (a compromised key)")
    retire.add_argument("--force", action="store_true", help="even if no key could sign afterwards")
    retire.add_argument("--now", **now)
    retire.set_defaults(run=_retire)

    prune = actions.add_parser("prune", help="remove keys whose tokens have all expired")
    prune.add_argument("file")
    prune.add_argument("--token-lifetime", type=_duration, default=DEFAULT_LIFETIME)
    prune.add_argument("--now", **now)
    prune.set_defaults(run=_prune)

    show = actions.add_parser("show", help="print the public part of a key set as JSON")
    show.add_argument("file")
    show.add_argument("--now", **now)
    show.set_defaults(run=_show)

    imported = actions.add_parser(
        "import-openunison", help="write a key set file holding OpenUnison's signing key pair (no re-key)"
    )
    imported.add_argument("--endpoint", required=True, type=_name(_DNS_LABEL, "an endpoint name (DNS label)"))
    imported.add_argument(
        "--secret", required=True, help="the key pair's kubernetes.io/tls Secret as YAML or JSON ('-' for stdin)"
    )
    imported.add_argument("--sign-for", type=_duration, default=DEFAULT_SIGN_FOR, help="signing window (default 365d)")
    imported.add_argument("-o", "--output", required=True, help="key set file to write")
    imported.add_argument("--force", action="store_true", help="replace an existing file")
    imported.add_argument("--now", **now)
    imported.set_defaults(run=_import_openunison)

    secret = actions.add_parser("secret", help="print the Secret manifest (contains private keys)")
    secret.add_argument("file")
    secret.add_argument("--name", required=True, type=_name(_DNS_SUBDOMAIN, "a Secret name"))
    secret.add_argument("--namespace", required=True, type=_name(_DNS_LABEL, "a namespace name"))
    secret.set_defaults(run=_secret)


def _docs_parser(docs: argparse.ArgumentParser) -> None:
    source = docs.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="https://<service>/<path>/issuer-docs of a running endpoint")
    source.add_argument("--documents", help="a saved issuer-docs answer, '-' for stdin (e.g. from kubectl get --raw)")
    source.add_argument("--keyset", help="a key set file (offline; needs --host)")
    docs.add_argument("--host", help="with --keyset: the issuer host, e.g. d1234.cloudfront.net")
    docs.add_argument("--token-lifetime", type=_duration, default=DEFAULT_LIFETIME, help="with --keyset (default 1h)")
    docs.add_argument("--aws-session-tags", action="store_true", help="with --keyset: the endpoint sets session tags")
    docs.add_argument("--now", **_NOW)
    docs.add_argument("--cacert", help="CA bundle to trust for --url")
    docs.add_argument("-o", "--output", help="directory to write")
    docs.add_argument("--s3-bucket", help="upload to this bucket's root (needs the publish extra: boto3)")
    docs.add_argument(
        "--cloudfront-distribution", metavar="ID", help="with --s3-bucket: invalidate the paths that changed"
    )
    docs.set_defaults(run=_issuer_docs)


def _protect_kids(arguments: list[str]) -> list[str]:
    """Pass ``keys retire`` positionals after ``--``: a kid may start with '-' (base64url)."""
    if arguments[:2] != ["keys", "retire"]:
        return arguments
    options: list[str] = []
    positionals: list[str] = []
    words = iter(arguments[2:])
    for word in words:
        if word in ("--remove", "--force", "-h", "--help") or word.startswith("--now="):
            options.append(word)
        elif word == "--now":
            options += [word, next(words, "")]
        elif word == "--":
            positionals += list(words)
        else:
            positionals.append(word)
    return [*arguments[:2], *options, "--", *positionals]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``keys ...`` or ``issuer-docs ...``; returns the exit code."""
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(_protect_kids(arguments))
        result: int = args.run(args, stdout, stderr)
    except UsageError as exc:
        stderr.write(f"{exc}\n")
        return 2
    except InputError as exc:
        stderr.write(f"error: {exc}\n")
        return 1
    except keyset.KeySetError as exc:  # a set the command cannot change, whichever check found it
        stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        stderr.write(f"error: {exc.filename or ''}: {exc.strerror}\n")
        return 1
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return result


if __name__ == "__main__":
    sys.exit(main())
