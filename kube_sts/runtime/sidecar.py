"""``kube-sts-sidecar``: keeps a minted token fresh in a file the application reads.

Standard library only. Each exchange reads the projected ServiceAccount token, POSTs it as a
bearer token to the token service over TLS (trusting only the given CA, verifying the host name;
one HTTP/1.1 POST per exchange with ``Connection: close``) and writes the answer's ``token``
atomically with mode 0644: a new temporary file under a random name in the same directory
(``O_EXCL | O_NOFOLLOW``, so nothing planted in the shared directory is written through), every
byte written, size checked, fsync, rename (which replaces a link planted at the final name, never
its target), fsync of the directory. A write that fails part way (a file-size limit, a full
volume) leaves the last good token in place. Refreshes are due at ``--refresh-fraction`` of the
answer's ``expires_in`` (+-10% jitter) after the answer arrived, on the monotonic clock, so skew
between the node's clock and the token service's changes nothing; failures back off
exponentially (1 s doubling to ``--max-backoff``) while the last good token stays on disk.
``--credential-config FILE`` with ``--credential-config-env VAR`` also writes the JSON object the
variable holds to FILE (atomically, mode 0644) before the first exchange: the Google
``external_account`` configuration that names the token file, so a Pod needs no ConfigMap for it.
``--once`` fetches one token and exits (init-container fallback); ``--check`` exits 0 when the
token file holds a token valid for at least 10 more seconds, judged by when the file was written
and the token's own lifetime (startup and readiness probes). SIGTERM and SIGINT end the loop with
exit status 0. A configuration the sidecar cannot work with (CA, ServiceAccount token file, URL,
token directory, options) ends it at start-up with one line on stderr saying why: exit status 1,
or 2 for a usage error.

Why a hand-written HTTP response parser and not ``http.client``: memory. ``bench/sidecar.py``
(RSS after the first refresh, target 20 MB) measures 19.6 MB with this parser (argparse and
urllib.parse included) and 21.1 MB when ``http.client`` (which brings the ``email`` package) is
merely imported as well; with the hand-written argument reader and URL splitter that preceded
argparse and urllib.parse it was 18.6 MB, and all three standard modules together 20.5 MB. The
parser is small, strict and bounded (16 KiB of head, 1 MiB of body, one deadline for the whole
answer, which ``http.client`` has no notion of), and it is fuzzed with arbitrary bytes in
arbitrary pieces and checked against ``http.client`` on generated well-formed answers
(``tests/sidecar/test_protocol.py``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["Options", "expiry", "main", "parse_arguments", "write_atomically"]

TIMEOUT = 10.0  # seconds for each connect, send and receive
DEADLINE = 30.0  # seconds for a whole exchange, however slowly the answer trickles in
CHECK_MARGIN = 10
MAX_HEAD = 16 * 1024  # status line and headers of the token service's answer
MAX_BODY = 1024 * 1024  # the answer's body (a token is a few kB)
MAX_LINE = 1024  # a chunk-size line
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class Flag:
    """The command line, as the admission webhook writes it into each sidecar (``webhook.injection``)."""

    URL = "--url"
    SERVICE_ACCOUNT_TOKEN = "--service-account-token"  # noqa: S105 (a flag name)
    TOKEN_FILE = "--token-file"  # noqa: S105 (a flag name)
    CA_FILE = "--ca-file"
    CA_ENV = "--ca-env"
    CREDENTIAL_CONFIG = "--credential-config"
    CREDENTIAL_CONFIG_ENV = "--credential-config-env"
    REFRESH_FRACTION = "--refresh-fraction"
    MAX_BACKOFF = "--max-backoff"
    ONCE = "--once"
    CHECK = "--check"


def _numeric(claims: dict[str, object], name: str) -> int | None:
    value = claims.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _claims(token: str) -> dict[str, object]:
    """The payload of a JWT (not verified; only the token service's answer is trusted), or {}."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT (not verified; only the token service's answer is trusted)."""
    return _numeric(_claims(token), "exp")


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replaces ``path`` with ``data`` so that a reader sees the old file or the whole new one.

    The temporary file gets a random name in the same directory and is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a file or symbolic link planted under any name is never
    opened, let alone written through); every byte is written (short writes are resumed), the size
    is checked and the file is synced before ``rename`` puts it in place. ``rename`` replaces a
    symbolic link planted at ``path`` itself, never its target, and afterwards ``path`` must name
    the very file written. Any failure (``EFBIG`` from a file-size limit, ``ENOSPC``, ...) is an
    ``OSError`` that leaves the existing file as it was and no temporary file behind.
    """
    directory = os.path.dirname(path) or "."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(8).hex()}.tmp")
        try:
            descriptor = os.open(temporary, flags, mode)
        except FileExistsError:
            continue  # a name taken by chance or planted: draw another
        break
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                count = os.write(descriptor, view)
                if count <= 0:
                    raise OSError(errno.EIO, "a write made no progress")
                view = view[count:]
            os.fsync(descriptor)
            written = os.fstat(descriptor)
            if written.st_size != len(data):
                raise OSError(errno.EIO, f"wrote {written.st_size} of {len(data)} bytes")
            os.rename(temporary, path)
        finally:
            os.close(descriptor)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    placed = os.lstat(path)
    if (placed.st_dev, placed.st_ino) != (written.st_dev, written.st_ino):
        raise OSError(errno.EEXIST, f"{path} was replaced while it was written")
    directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


class Options:
    """The command line (the attributes argparse reads, typed)."""

    url: str | None = None
    service_account_token: str | None = None
    token_file: str = ""
    ca_file: str | None = None
    ca_env: str | None = None
    credential_config: str | None = None
    credential_config_env: str | None = None
    refresh_fraction: float = 0.5
    max_backoff: float = 30.0
    once: bool = False
    check: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error is one line on stderr (what a crash loop's log shows) and exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kube-sts-sidecar", description=__doc__.split("\n")[0])
    parser.add_argument(Flag.URL, help="https://.../<endpoint path>/token")
    parser.add_argument(Flag.SERVICE_ACCOUNT_TOKEN, help="projected ServiceAccount token file")
    parser.add_argument(Flag.TOKEN_FILE, required=True, help="where the minted token is written")
    parser.add_argument(Flag.CA_FILE, help="PEM file of the token service's CA")
    parser.add_argument(Flag.CA_ENV, help="variable holding the PEM of the token service's CA")
    parser.add_argument(Flag.CREDENTIAL_CONFIG, help="also write this credential configuration file")
    parser.add_argument(Flag.CREDENTIAL_CONFIG_ENV, help="variable holding the credential configuration (JSON)")
    parser.add_argument(Flag.REFRESH_FRACTION, type=float, default=0.5, help="refresh at this share of the lifetime")
    parser.add_argument(Flag.MAX_BACKOFF, type=float, default=30.0, help="longest wait between failed attempts (s)")
    parser.add_argument(Flag.ONCE, action="store_true", help="fetch one token and exit")
    parser.add_argument(Flag.CHECK, action="store_true", help="exit 0 when a valid token is on disk")
    return parser


_NAMES = (
    "url",
    "service_account_token",
    "token_file",
    "ca_file",
    "ca_env",
    "credential_config",
    "credential_config_env",
    "refresh_fraction",
    "max_backoff",
)


def parse_arguments(argv: Sequence[str] | None = None) -> Options:
    """The command line; a usage error is one line on stderr and exit status 2."""
    parser = _parser()
    namespace = parser.parse_args(argv)
    options = Options()
    for name in (*_NAMES, "once", "check"):
        setattr(options, name, getattr(namespace, name))
    if not options.check:
        if not options.url or not options.service_account_token:
            parser.error("--url and --service-account-token are required unless --check")
        if not 0.1 <= options.refresh_fraction <= 0.9:
            parser.error("--refresh-fraction must be between 0.1 and 0.9")
        if not 0.1 <= options.max_backoff <= 3600:
            parser.error("--max-backoff must be between 0.1 and 3600 seconds")
        if (options.credential_config is None) != (options.credential_config_env is None):
            parser.error("--credential-config and --credential-config-env go together")
    return options


class ExchangeError(Exception):
    pass


def _fail(message: str) -> NoReturn:
    """A start-up or configuration error: one line on stderr saying why, exit status 1."""
    raise SystemExit(f"kube-sts-sidecar: error: {message}")


def _context(args: Options) -> ssl.SSLContext:
    """Trusts only the given CA (never the system store) and verifies the host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.ca_file:
        where = f"--ca-file {args.ca_file}"
        try:
            context.load_verify_locations(cafile=args.ca_file)
        except ssl.SSLError as exc:
            _fail(f"{where} holds no valid PEM certificate ({exc.reason or exc})")
        except OSError as exc:
            _fail(f"cannot read {where}: {exc.strerror or exc}")
    elif args.ca_env:
        where = f"variable {args.ca_env} (--ca-env)"
        pem = os.environ.get(args.ca_env, "")
        if not pem.strip():
            _fail(f"{where} holds no CA certificate")
        try:
            context.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            _fail(f"{where} holds no valid PEM certificate ({exc.reason or exc})")
        except (TypeError, ValueError):
            _fail(f"{where} holds no valid PEM certificate (not ASCII)")
    else:
        _fail("--ca-file or --ca-env is required")
    if not context.get_ca_certs():
        _fail("the CA given by --ca-file or --ca-env holds no CA certificate")
    return context


def configure(args: Options) -> ssl.SSLContext:
    """Checks everything the exchanges rely on, once at start-up; any problem is ``_fail``.

    Later failures of the same kind (a token file that cannot be read for a moment) are retried,
    but a Pod whose configuration is wrong must say so in one line and exit, not retry forever.
    """
    try:
        split_url(args.url or "")
    except ExchangeError:
        _fail(f"--url {args.url!r} is not an https:// URL with a host (and a port up to 65535)")
    try:
        _identity(args)
    except ExchangeError as exc:
        _fail(f"--service-account-token {args.service_account_token}: {exc}")
    directory = os.path.dirname(args.token_file) or "."
    if not os.path.isdir(directory):
        _fail(f"--token-file {args.token_file}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        _fail(f"--token-file {args.token_file}: the directory {directory} is not writable")
    context = _context(args)
    if args.credential_config is not None:
        write_credential_config(args)
    return context


def write_credential_config(args: Options) -> None:
    """Writes the JSON object in ``--credential-config-env`` to ``--credential-config``, or ``_fail``."""
    where = f"variable {args.credential_config_env} (--credential-config-env)"
    text = os.environ.get(args.credential_config_env or "", "")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        _fail(f"{where} holds no JSON")
    if not isinstance(document, dict) or not document:
        _fail(f"{where} holds no JSON object")
    try:
        write_atomically(args.credential_config or "", (json.dumps(document, indent=2) + "\n").encode())
    except OSError as exc:
        _fail(f"cannot write --credential-config {args.credential_config}: {exc.strerror or exc}")


def _printable_ascii(text: str) -> bool:
    return text.isascii() and all(" " <= character < "\x7f" for character in text)


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an ``https://`` URL as ``urllib.parse.urlsplit`` reads it.

    The host is lower-cased and without the brackets of an IPv6 literal; the port defaults to
    443; the path is ``/`` when empty; user information, query and fragment are dropped. Refused:
    another scheme, no host, a bad port, and anything outside printable ASCII or with a space
    (urlsplit would silently drop a CR or LF; such a URL is not what the operator meant).
    """
    if not _printable_ascii(url) or " " in url:
        raise ExchangeError("--url must be an https:// URL")
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ExchangeError("--url must be an https:// URL") from None
    after_bracket = parts.netloc.rpartition("@")[2].partition("]")[2]
    if parts.scheme != "https" or not host or after_bracket[:1] not in ("", ":"):
        raise ExchangeError("--url must be an https:// URL")
    return host, port or 443, parts.path or "/"


class _Reader:
    """Buffered reads from a socket, each bounded in size, all within one deadline."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        self.connection = connection
        self.deadline = deadline
        self.buffer = bytearray()
        self.eof = False

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ExchangeError("token service answer too slow")
        self.connection.settimeout(min(remaining, TIMEOUT))
        data = self.connection.recv(65536)
        if data:
            self.buffer += data
        else:
            self.eof = True

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes before ``marker`` (which is consumed), at most ``limit`` of them."""
        start = 0
        while (found := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > limit:
                raise ExchangeError(f"token service answer has an oversized {what}")
            if self.eof:
                raise ExchangeError(f"token service answer truncated in its {what}")
            start = max(len(self.buffer) - len(marker) + 1, 0)
            self._fill()
        if found > limit:
            raise ExchangeError(f"token service answer has an oversized {what}")
        data = bytes(self.buffer[:found])
        del self.buffer[: found + len(marker)]
        return data

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if self.eof:
                raise ExchangeError("token service answer truncated in its body")
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def rest(self, limit: int) -> bytes:
        while not self.eof:
            if len(self.buffer) > limit:
                raise ExchangeError("token service answer has an oversized body")
            self._fill()
        if len(self.buffer) > limit:
            raise ExchangeError("token service answer has an oversized body")
        return bytes(self.buffer)


def read_response(reader: _Reader) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.x answer; the body is read only for status 200.

    Strict: CRLF line ends, ``HTTP/1.0`` or ``HTTP/1.1`` and a three-digit status, no folded or
    nameless header lines, one decimal Content-Length or ``Transfer-Encoding: chunked`` (not
    both) or else the body up to the end of the connection; every part within its bound.
    """
    head = reader.until(b"\r\n\r\n", MAX_HEAD, "header")
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not (code.isdigit() and rest[3:4] in (b"", b" ")):
        raise ExchangeError("token service answer is not HTTP")
    status = int(code)
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or not name.isascii():
            raise ExchangeError("token service answer has a malformed header")
        field = name.lower()
        if field == b"content-length":
            lengths.append(value.strip())
        elif field == b"transfer-encoding":
            codings.append(value.strip().lower())
    if status != 200:
        return status, b""
    if codings:
        if lengths or codings != [b"chunked"]:
            raise ExchangeError("token service answer has an unsupported transfer coding")
        return status, _chunked(reader)
    if lengths:
        if len(lengths) != 1 or not lengths[0].isdigit():
            raise ExchangeError("token service answer has an invalid Content-Length")
        size = int(lengths[0])
        if size > MAX_BODY:
            raise ExchangeError("token service answer has an oversized body")
        return status, reader.exactly(size)
    return status, reader.rest(MAX_BODY)


def _chunked(reader: _Reader) -> bytes:
    body = bytearray()
    while True:
        size_line = reader.until(b"\r\n", MAX_LINE, "chunk size").partition(b";")[0].strip()
        if not size_line or size_line.strip(b"0123456789abcdefABCDEF"):
            raise ExchangeError("token service answer has a malformed chunk")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)  # trailers, if any, are not needed (the connection closes)
        if len(body) + size > MAX_BODY:
            raise ExchangeError("token service answer has an oversized body")
        body += reader.exactly(size)
        if reader.exactly(2) != b"\r\n":
            raise ExchangeError("token service answer has a malformed chunk")


def post(url: str, authorization: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One HTTP/1.1 POST without a body over a new TLS connection: (status, body)."""
    host, port, path = split_url(url)
    host_header = f"[{host}]" if ":" in host else host
    if port != 443:
        host_header += f":{port}"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept-Encoding: identity\r\n"
        f"Authorization: {authorization}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    deadline = time.monotonic() + DEADLINE
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host) as connection,
        ):
            connection.sendall(request)
            return read_response(_Reader(connection, deadline))
    except (OSError, ValueError) as exc:  # ssl errors and timeouts are OSErrors; IDNA errors ValueErrors
        raise ExchangeError(f"token service unreachable: {exc}") from None


def _identity(args: Options) -> str:
    """The projected ServiceAccount token, read afresh (the kubelet rotates it)."""
    try:
        with open(args.service_account_token or "", encoding="ascii") as handle:
            identity = handle.read().strip()
    except OSError as exc:
        raise ExchangeError(f"cannot read the ServiceAccount token: {exc.strerror or exc}") from None
    except ValueError:
        raise ExchangeError("cannot read the ServiceAccount token: not ASCII") from None
    if not identity:
        raise ExchangeError("cannot read the ServiceAccount token: the file is empty")
    if not _printable_ascii(identity):
        raise ExchangeError("cannot read the ServiceAccount token: it holds control characters")
    return identity


class Answer:
    """A minted token, how long it lives and when (monotonic clock) the answer arrived."""

    def __init__(self, token: str, lifetime: float, arrived: float) -> None:
        self.token = token
        self.lifetime = lifetime
        self.arrived = arrived


def lifetime_of(document: dict[str, object], claims: dict[str, object], now: float) -> float:
    """Seconds the token lives, counted from its arrival, without trusting this host's wall clock.

    The answer's ``expires_in`` is a duration measured on the token service's clock, so clock
    skew between the node and the service does not change it; it is checked against the token's
    own ``exp - iat`` (also a duration). Only when neither is given is the local clock used,
    with the answer's ``expires_at`` (which must then agree with ``exp``).
    """
    exp = _numeric(claims, "exp")
    iat = _numeric(claims, "iat")
    expires_in = _numeric(document, "expires_in")
    expires_at = _numeric(document, "expires_at")
    if exp is None:
        raise ExchangeError("token service answer holds no token with an exp claim")
    if expires_at is not None and expires_at != exp:
        raise ExchangeError("token service answer's expires_at disagrees with the token's exp claim")
    durations = [d for d in (expires_in, None if iat is None else exp - iat) if d is not None]
    if durations:
        lifetime = min(durations)
        if lifetime <= 0:
            raise ExchangeError("token service answer holds a token that lives no time")
        return float(lifetime)
    return max(exp - now, 1.0)


def exchange(args: Options, context: ssl.SSLContext) -> Answer:
    """One token exchange."""
    identity = _identity(args)
    status, body = post(args.url or "", f"Bearer {identity}", context)
    arrived = time.monotonic()
    if status != 200:
        raise ExchangeError(f"token service answered {status}")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ExchangeError("token service answer is not JSON") from None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token.isascii() or not isinstance(document, dict):
        raise ExchangeError("token service answer holds no token with an exp claim")
    return Answer(token, lifetime_of(document, _claims(token), time.time()), arrived)


def valid_on_disk(path: str, now: float, margin: int = CHECK_MARGIN) -> int | None:
    """The token's ``exp`` when the file at ``path`` (never a link) holds a token valid past ``margin``.

    Validity is judged on this host's clock without comparing it with the token service's: the
    file's modification time (when the sidecar wrote it, as it arrived) plus the token's own
    lifetime ``exp - iat``; only a token without ``iat`` is judged by ``exp`` alone.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(descriptor, encoding="ascii") as handle:
            written = os.fstat(handle.fileno()).st_mtime
            claims = _claims(handle.read(MAX_BODY).strip())
    except (OSError, ValueError):
        return None
    exp = _numeric(claims, "exp")
    iat = _numeric(claims, "iat")
    if exp is None:
        return None
    until = written + (exp - iat) if iat is not None and iat < exp else exp
    return exp if until > now + margin else None


def _log(message: str) -> None:
    print(f"kube-sts-sidecar: {message}", file=sys.stderr, flush=True)


def _jitter(low: float, high: float) -> float:
    """Uniform in [low, high) (the random module is not needed for jitter)."""
    return low + (high - low) * int.from_bytes(os.urandom(4), "big") / 2**32


class Stop:
    """SIGTERM and SIGINT, blocked and taken only while waiting (no handler thread, no threading).

    A signal that arrives during an exchange stays pending: the exchange completes (its token is
    written) and the next wait returns at once, as an event set by a signal handler would.
    """

    def __init__(self) -> None:
        self._set = False
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if not self._set and signal.sigtimedwait(SIGNALS, max(timeout, 0.0)) is not None:
            self._set = True
        return self._set


def run(args: Options, stop: Stop) -> int:
    # A file-size limit must fail the write with EFBIG (the last good token stays), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    context = configure(args)
    backoff = 1.0
    attempts = 0
    while not stop.is_set():
        try:
            answer = exchange(args, context)
            write_atomically(args.token_file, answer.token.encode("ascii"))
        except (ExchangeError, OSError) as exc:
            attempts += 1
            _log(f"exchange failed ({exc}); keeping the last token on disk")
            if args.once and attempts >= 8:
                return 1
            stop.wait(backoff * _jitter(0.8, 1.2))
            backoff = min(backoff * 2, args.max_backoff)
            continue
        attempts = 0
        backoff = 1.0
        if args.once:
            return 0
        # Due at the fraction of the lifetime after the answer arrived, on the monotonic clock.
        due = answer.arrived + answer.lifetime * args.refresh_fraction * _jitter(0.9, 1.1)
        stop.wait(max(due - time.monotonic(), 1.0))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.check:
        return 0 if valid_on_disk(args.token_file, time.time()) is not None else 1
    try:
        return run(args, Stop())
    except Exception as exc:  # a crash loop must say why in one line, never with a traceback
        print(f"kube-sts-sidecar: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
