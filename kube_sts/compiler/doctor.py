"""``sts-compile doctor``: what a relying party would conclude about a token, in plain lines.

The token is decoded without trusting it, then checked against the values file and what
``sts-compile trust`` generates for it: ``iss`` against the endpoint's issuer (and, with
``--issuer-url``, the discovery document served there over HTTPS and the JWKS it names: ``kid``
present, signature), ``aud``, ``sub`` against the subjects the trust documents pin, the algorithm,
the lifetime and the clock skew, and, for AWS with ``--role``, whether that role's generated trust
policy admits the token. One line per check: ``ok``, ``FAIL`` or ``skip``. Exit 0 when no check
fails, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import pathlib
import ssl
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from kube_sts.compiler.trust import aws, command, subjects
from kube_sts.runtime import config

__all__ = ["SKEW", "main"]

SKEW = 60
"""Clock skew tolerated on ``iat``/``nbf`` (what AWS, Entra and Google allow, and Vault's default)."""
_MAX_DOCUMENT = 1 << 20


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def ok(self, what: str, detail: str) -> None:
        self.out.write(f"ok    {what}: {detail}\n")

    def fail(self, what: str, detail: str) -> None:
        self.failed = True
        self.out.write(f"FAIL  {what}: {detail}\n")

    def skip(self, what: str, detail: str) -> None:
        self.out.write(f"skip  {what}: {detail}\n")

    def check(self, what: str, good: bool, ok: str, bad: str) -> bool:
        (self.ok if good else self.fail)(what, ok if good else bad)
        return good


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """``(header, claims, signing input, signature)``, unverified; ValueError when not a JWS JWT."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError(f"a JWT has 3 dot-separated parts, this has {len(parts)}")
    try:
        header, claims = json.loads(_b64(parts[0])), json.loads(_b64(parts[1]))
        signature = _b64(parts[2])
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the parts are not base64url JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("the header and payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else -1


def _fetch(url: str, context: ssl.SSLContext) -> Any:
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ValueError(f"{url} is not https")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (https only)
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
        return json.loads(response.read(_MAX_DOCUMENT))


def _verify(jwk: dict[str, Any], algorithm: str, message: bytes, signature: bytes) -> bool:
    try:
        if algorithm == "RS256" and jwk.get("kty") == "RSA":
            n, e = (int.from_bytes(_b64(jwk[k]), "big") for k in ("n", "e"))
            rsa.RSAPublicNumbers(e, n).public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            return True
        if algorithm == "ES256" and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256" and len(signature) == 64:
            x, y = (int.from_bytes(_b64(jwk[k]), "big") for k in ("x", "y"))
            key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
            der = utils.encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, KeyError, ValueError, binascii.Error):
        return False
    return False


def _endpoint(
    report: _Report, endpoints: Sequence[config.Endpoint], wanted: str | None, iss: Any
) -> tuple[int, config.Endpoint] | None:
    if wanted is not None:
        found = [(i, e) for i, e in enumerate(endpoints) if e.name == wanted]
    else:
        found = [(i, e) for i, e in enumerate(endpoints) if e.issuer.url == iss]
        if not found and len(endpoints) == 1:
            found = [(0, endpoints[0])]
    if not found:
        report.fail("endpoint", f"no endpoint issues for iss {iss!r}; name one with --endpoint")
        return None
    return found[0]


def _issuer_checks(
    report: _Report,
    endpoint: config.Endpoint,
    *,
    header: dict[str, Any],
    claims: dict[str, Any],
    signed: tuple[bytes, bytes],
    issuer_url: str,
    context: ssl.SSLContext,
) -> None:
    base = issuer_url.rstrip("/")
    where = f"{base}/.well-known/openid-configuration"
    try:
        discovery = _fetch(where, context)
    except (OSError, ValueError) as exc:
        report.fail("discovery", f"cannot fetch {where}: {exc}")
        return
    named = discovery.get("issuer") if isinstance(discovery, dict) else None
    report.check(
        "discovery",
        named == claims.get("iss"),
        f"{where} names issuer {named}",
        f"{where} names issuer {named!r}, the token's iss is {claims.get('iss')!r}; relying parties compare them "
        "byte for byte",
    )
    jwks_uri = str(discovery.get("jwks_uri", "")) if isinstance(discovery, dict) else ""
    fetch = base + jwks_uri[len(endpoint.issuer.url) :] if jwks_uri.startswith(endpoint.issuer.url + "/") else jwks_uri
    try:
        jwks = _fetch(fetch, context)
        keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
    except (OSError, ValueError, AttributeError) as exc:
        report.fail("kid", f"cannot fetch the JWKS {jwks_uri or '(no jwks_uri)'}: {exc}")
        return
    kid = header.get("kid")
    matching = [k for k in keys if k.get("kid") == kid]
    served = ", ".join(str(k.get("kid")) for k in keys) or "none"
    if not report.check(
        "kid",
        bool(matching),
        f"{kid} is in the JWKS {jwks_uri} serves",
        f"{kid!r} is not in the JWKS {jwks_uri} serves (it serves {served}): upload the issuer documents "
        "(sts-compile issuer-docs) or wait for the CDN cache",
    ):
        return
    report.check(
        "signature",
        _verify(matching[0], str(header.get("alg")), *signed),
        f"verifies with key {kid}",
        f"does not verify with key {kid}: the token was changed or signed by another key",
    )


def run(args: argparse.Namespace, token: str, out: TextIO, now: Callable[[], float] = time.time) -> int:
    loaded = command.load(args.values, sys.stderr)
    if isinstance(loaded, int):
        return loaded
    _, _, model = loaded
    report = _Report(out)
    try:
        header, claims, signing_input, signature = decode(token)
    except ValueError as exc:
        report.fail("token", f"not a JWT: {exc}")
        return 1
    report.ok("token", f"a JWT with header {json.dumps(header, sort_keys=True)} (decoded, not yet trusted)")
    chosen = _endpoint(report, model.sts.endpoints, args.endpoint, claims.get("iss"))
    if chosen is None:
        return 1
    index, endpoint = chosen
    party = command.relying_party(endpoint, args.relying_party) or "generic"
    iss = claims.get("iss")
    report.check(
        "iss",
        iss == endpoint.issuer.url,
        f"{iss} is endpoint {endpoint.name}'s issuer",
        f"{iss!r} is not {endpoint.issuer.url!r}, sts.endpoints[{index}].issuer.host; relying parties compare "
        "iss byte for byte (scheme, host, no trailing slash)",
    )
    if args.issuer_url:
        context = ssl.create_default_context(cafile=args.cacert)
        _issuer_checks(
            report,
            endpoint,
            header=header,
            claims=claims,
            signed=(signing_input, signature),
            issuer_url=args.issuer_url,
            context=context,
        )
    else:
        report.skip("discovery", "give --issuer-url to fetch the discovery document, the JWKS and check kid")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    report.check(
        "aud",
        endpoint.audience in audiences,
        f"{endpoint.audience}",
        f"{aud!r}, but endpoint {endpoint.name}'s audience (what the relying party was told) is {endpoint.audience!r}",
    )
    _subject(report, model.sts.cluster, index, endpoint, claims=claims, roles=args.role)
    alg = header.get("alg")
    report.check(
        "alg",
        alg == endpoint.token.algorithm,
        f"{alg}",
        f"{alg!r}, but the endpoint signs with {endpoint.token.algorithm}"
        + ("; Entra ID accepts RS256 only" if party == "azure" else ""),
    )
    _times(report, endpoint, claims, int(now()))
    if party == "aws":
        _aws(report, model.sts.cluster, index, endpoint, claims=claims, roles=args.role)
    return 1 if report.failed else 0


def _subject(
    report: _Report, cluster: str, index: int, endpoint: config.Endpoint, *, claims: dict[str, Any], roles: list[str]
) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        report.fail("sub", "the token has no sub")
        return
    carries = "{role}" in endpoint.subject_template
    if carries and not roles:
        report.skip("sub", f"{sub}: the sub carries the role; give --role to check it against that role's trust")
        return
    try:
        found = subjects.patterns(endpoint, cluster, roles[0] if carries else None, index=index)
    except subjects.TrustError as exc:
        report.fail("sub", f"{sub}: {exc.message}")
        return
    hits = [p for p in found if p.matches(sub)]
    pinned = ", ".join(repr(p.glob()) for p in found)
    report.check(
        "sub",
        bool(hits),
        f"{sub} matches the trust written for azRules[{hits[0].rule}]" if hits else "",
        f"{sub!r} matches none of the subjects the generated trust pins ({pinned})",
    )


def _times(report: _Report, endpoint: config.Endpoint, claims: dict[str, Any], now: int) -> None:
    iat, nbf, exp = (_int(claims.get(name)) for name in ("iat", "nbf", "exp"))
    if exp < 0 or iat < 0:
        report.fail("lifetime", "iat and exp must be integer NumericDates")
        return
    lifetime = exp - iat
    report.check(
        "lifetime",
        0 < lifetime <= endpoint.token.lifetime,
        f"{lifetime}s (configured {endpoint.token.lifetime}s)",
        f"{lifetime}s, but the endpoint mints {endpoint.token.lifetime}s tokens",
    )
    report.check("exp", exp > now, f"expires in {exp - now}s", f"expired {now - exp}s ago")
    start = max(iat, nbf)
    report.check(
        "clock",
        start <= now + SKEW,
        f"issued {now - iat}s ago (skew within {SKEW}s)",
        f"issued {start - now}s in the future: the token service's clock is ahead of this one by more than "
        f"{SKEW}s; relying parties refuse such tokens",
    )


def _aws(
    report: _Report, cluster: str, index: int, endpoint: config.Endpoint, *, claims: dict[str, Any], roles: list[str]
) -> None:
    if not roles:
        report.skip("aws", "give --role ARN to evaluate that role's generated trust policy")
        return
    for role in roles:
        try:
            account, _ = aws.role_parts(role)
            policy = aws.trust_policy(endpoint, cluster, account, role, index)
        except (ValueError, subjects.TrustError) as exc:
            report.fail("aws", f"{role}: {exc}")
            continue
        report.check(
            "aws",
            aws.admits(policy, endpoint.issuer.host, claims),
            f"the generated trust policy of {role} admits the token",
            f"the generated trust policy of {role} refuses the token (AccessDenied): its aud or sub is not one the "
            "policy pins",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sts-compile doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("values", help="the values file")
    parser.add_argument("token", help="the token file, or '-' for stdin")
    parser.add_argument("--endpoint", metavar="NAME", help="the endpoint (default: the one whose issuer is iss)")
    parser.add_argument("--for", dest="relying_party", choices=command.RELYING_PARTIES, help="the relying party")
    parser.add_argument("--issuer-url", metavar="URL", help="where the issuer documents are served (https)")
    parser.add_argument("--cacert", metavar="FILE", help="CA bundle for --issuer-url (default: the system's)")
    parser.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="VALUE",
        help="the role the token is for (AWS: evaluate its generated trust policy)",
    )
    return parser


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.issuer_url and urllib.parse.urlsplit(args.issuer_url).scheme != "https":
        sys.stderr.write("sts-compile doctor: error: --issuer-url must be https\n")
        return 2
    try:
        token = sys.stdin.read() if args.token == "-" else pathlib.Path(args.token).read_text(encoding="utf-8")  # noqa: S105
    except (OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"sts-compile doctor: error: cannot read {args.token}: {exc}\n")
        return 2
    return run(args, token, out if out is not None else sys.stdout)
