"""``kube-sts-sidecar``: keeps a minted token fresh in a file the application reads.

Standard library only (http.client, ssl, json: a small resident footprint). Each exchange reads
the projected ServiceAccount token, POSTs it as a
bearer token to the token service over TLS (trusting only the given CA) and writes the answer's
``token`` atomically (temporary file in the same directory, fsync, rename, fsync of the directory)
with mode 0644. It refreshes at ``--refresh-fraction`` of the lifetime with +-10% jitter; failures
back off exponentially (1 s doubling to ``--max-backoff``) while the last good token stays on disk.
``--once`` fetches one token and exits (init-container fallback); ``--check`` exits 0 when the
token file holds a token valid for at least 10 more seconds (startup and readiness probes).
SIGTERM and SIGINT end the loop with exit status 0.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence

__all__ = ["expiry", "main", "write_atomically"]

TIMEOUT = 10.0
CHECK_MARGIN = 10


def expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT (not verified; only the token service's answer is trusted)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) else None


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.ca_file:
        context.load_verify_locations(cafile=args.ca_file)
    elif args.ca_env:
        pem = os.environ.get(args.ca_env, "")
        if not pem.strip():
            raise SystemExit(f"kube-sts-sidecar: variable {args.ca_env} holds no CA certificate")
        context.load_verify_locations(cadata=pem)
    else:
        raise SystemExit("kube-sts-sidecar: --ca-file or --ca-env is required")
    return context


class ExchangeError(Exception):
    pass


def exchange(args: argparse.Namespace, context: ssl.SSLContext) -> tuple[str, int]:
    """One token exchange: (token, exp)."""
    try:
        with open(args.service_account_token, encoding="ascii") as handle:
            identity = handle.read().strip()
    except OSError as exc:
        raise ExchangeError(f"cannot read the ServiceAccount token: {exc.strerror}") from None
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise ExchangeError("--url must be an https:// URL")
    connection = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=TIMEOUT, context=context)
    try:
        connection.request("POST", url.path or "/", body=b"", headers={"Authorization": f"Bearer {identity}"})
        answer = connection.getresponse()
        body = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ExchangeError(f"token service unreachable: {exc}") from None
    finally:
        connection.close()
    if answer.status != 200:
        raise ExchangeError(f"token service answered {answer.status}")
    try:
        document = json.loads(body)
    except ValueError:
        raise ExchangeError("token service answer is not JSON") from None
    token = document.get("token") if isinstance(document, dict) else None
    exp = expiry(token) if isinstance(token, str) else None
    if not isinstance(token, str) or exp is None:
        raise ExchangeError("token service answer holds no token with an exp claim")
    return token, exp


def valid_on_disk(path: str, now: float, margin: int = CHECK_MARGIN) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            exp = expiry(handle.read().strip())
    except (OSError, ValueError):
        return None
    return exp if exp is not None and exp > now + margin else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kube-sts-sidecar", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="https://.../<endpoint path>/token")
    parser.add_argument("--service-account-token", help="projected ServiceAccount token file")
    parser.add_argument("--token-file", required=True, help="where the minted token is written")
    parser.add_argument("--ca-file", help="PEM file of the token service's CA")
    parser.add_argument("--ca-env", help="variable holding the PEM of the token service's CA")
    parser.add_argument("--refresh-fraction", type=float, default=0.5, help="refresh at this share of the lifetime")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between failed attempts (s)")
    parser.add_argument("--once", action="store_true", help="fetch one token and exit")
    parser.add_argument("--check", action="store_true", help="exit 0 when a valid token is on disk")
    return parser


def _log(message: str) -> None:
    print(f"kube-sts-sidecar: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    context = _context(args)
    backoff = 1.0
    attempts = 0
    while not stop.is_set():
        try:
            started = time.time()
            token, exp = exchange(args, context)
            write_atomically(args.token_file, token.encode("ascii"))
        except (ExchangeError, OSError) as exc:
            attempts += 1
            _log(f"exchange failed ({exc}); keeping the last token on disk")
            if args.once and attempts >= 8:
                return 1
            stop.wait(backoff * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not cryptography)
            backoff = min(backoff * 2, args.max_backoff)
            continue
        attempts = 0
        backoff = 1.0
        if args.once:
            return 0
        lifetime = max(exp - started, 1.0)
        wait = lifetime * args.refresh_fraction * random.uniform(0.9, 1.1)  # noqa: S311
        stop.wait(max(wait, 1.0))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check:
        return 0 if valid_on_disk(args.token_file, time.time()) is not None else 1
    if not args.url or not args.service_account_token:
        _parser().error("--url and --service-account-token are required unless --check")
    if not 0.1 <= args.refresh_fraction <= 0.9:
        _parser().error("--refresh-fraction must be between 0.1 and 0.9")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run(args, stop)


if __name__ == "__main__":
    sys.exit(main())
