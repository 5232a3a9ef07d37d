"""The sidecar's own HTTP/1.1 client, its URL check and its command line.

The response parser is strict and bounded: malformed, oversized, truncated or slow answers are an
``ExchangeError`` (a retry that keeps the last good token), never a crash; fuzzed with any bytes in
any pieces, and against ``http.client`` on well-formed answers. URLs are read by
``urllib.parse`` and refused when they are not what can be requested; usage errors are one line
and exit status 2.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import itertools
import json
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import runtime as harness
from harness.token_service import SA_TOKEN, jwt
from kube_sts.runtime import sidecar


class FakeConnection:
    """Hands out a scripted answer in pieces, then the end of the connection."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.timeouts: list[float | None] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeouts.append(timeout)

    def recv(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            self.pieces.insert(0, piece[size:])
        return piece[:size]


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def read(data: bytes, *, piece: int = 0, deadline: float = 60.0) -> tuple[int, bytes]:
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    connection = FakeConnection(pieces)
    return sidecar.read_response(sidecar._Reader(connection, time.monotonic() + deadline))  # type: ignore[arg-type]


BODY = json.dumps({"token": jwt(2_000_000_000, filler=10)}).encode()


@pytest.mark.parametrize("piece", [0, 1, 7])
@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        (answer(BODY, "Content-Type: application/json", f"Content-Length: {len(BODY)}"), 200, BODY),
        (answer(BODY, f"content-length:{len(BODY)}", "X-Other: a:b"), 200, BODY),
        (answer(BODY + b"ignored after the length", f"Content-Length: {len(BODY)}"), 200, BODY),
        (answer(BODY, "Connection: close"), 200, BODY),  # no length: the body ends with the connection
        (answer(b"", "Content-Length: 0"), 200, b""),
        (
            answer(b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nTrailer: x\r\n\r\n", "Transfer-Encoding: chunked"),
            200,
            b"hello ",
        ),
        (answer(b"a" * 100, "Content-Length: 100", status="503 Service Unavailable"), 503, b""),
        (b"HTTP/1.0 401\r\n\r\n", 401, b""),
    ],
)
def test_well_formed_answers(data: bytes, status: int, body: bytes, piece: int) -> None:
    assert read(data, piece=piece) == (status, body)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated in its header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "truncated in its header"),
        (b"garbage\r\n\r\n", "not HTTP"),
        (b"\r\n\r\n", "not HTTP"),
        (b"HTTP/2 200\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not HTTP"),
        (b"SMTP/1.1 200 OK\r\n\r\n", "not HTTP"),
        (answer(b"x", "no colon here"), "malformed header"),
        (answer(b"x", ": nameless"), "malformed header"),
        (answer(b"x", "Content-Length : 1"), "malformed header"),
        (answer(b"x", "Content-Type: a", " folded"), "malformed header"),
        (answer(b"x", "Content-Length: 1", "Content-Length: 1"), "invalid Content-Length"),
        (answer(b"x", "Content-Length: -1"), "invalid Content-Length"),
        (answer(b"x", "Content-Length: 0x1"), "invalid Content-Length"),
        (answer(b"x", "Content-Length: "), "invalid Content-Length"),
        (answer(BODY[:10], f"Content-Length: {len(BODY)}"), "truncated in its body"),
        (answer(b"", f"Content-Length: {sidecar.MAX_BODY + 1}"), "oversized body"),
        (answer(b"x" * (sidecar.MAX_BODY + 1)), "oversized body"),
        (answer(b"x", "X-Big: " + "y" * sidecar.MAX_HEAD), "oversized header"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * sidecar.MAX_HEAD, "oversized header"),
        (answer(b"1\r\nx\r\n", "Transfer-Encoding: gzip"), "unsupported transfer coding"),
        (answer(b"1\r\nx\r\n0\r\n\r\n", "Transfer-Encoding: chunked", "Content-Length: 1"), "unsupported transfer"),
        (answer(b"1\r\nx\r\n", "Transfer-Encoding: chunked"), "truncated in its chunk size"),
        (answer(b"zz\r\nx\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), "malformed chunk"),
        (answer(b"-1\r\nx\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), "malformed chunk"),
        (answer(b"1\r\nxy\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), "malformed chunk"),
        (answer(b"5\r\nab", "Transfer-Encoding: chunked"), "truncated in its body"),
        (answer(b"1" * 2000 + b"\r\n", "Transfer-Encoding: chunked"), "oversized chunk size"),
        (answer(b"%x\r\n" % (sidecar.MAX_BODY + 1), "Transfer-Encoding: chunked"), "oversized body"),
    ],
)
def test_malformed_oversized_and_truncated_answers_are_exchange_errors(data: bytes, message: str) -> None:
    for piece in (0, 3 if len(data) < 100_000 else 4096):
        with pytest.raises(sidecar.ExchangeError, match=message):
            read(data, piece=piece)


def test_an_answer_past_its_deadline_is_an_exchange_error() -> None:
    with pytest.raises(sidecar.ExchangeError, match="too slow"):
        read(answer(BODY, f"Content-Length: {len(BODY)}"), deadline=-1)


def test_each_receive_waits_at_most_the_timeout() -> None:
    connection = FakeConnection([answer(b"ok", "Content-Length: 2")])
    sidecar.read_response(sidecar._Reader(connection, time.monotonic() + 3600))  # type: ignore[arg-type]
    assert connection.timeouts and all(t is not None and 0 < t <= sidecar.TIMEOUT for t in connection.timeouts)


# -- fuzzing the response parser: any bytes in any pieces, and a differential check -------------


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def parse(data: bytes, cuts: list[int]) -> tuple[int, bytes]:
    connection = FakeConnection(pieces_of(data, cuts))
    return sidecar.read_response(sidecar._Reader(connection, time.monotonic() + 60))  # type: ignore[arg-type]


PREFIXES = [
    *(b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 503 x\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"),
    *(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nabcdefg\r\n",
]
FRAGMENTS = [
    *(b"\r\n", b"\r\n\r\n", b"\n", b"\r", b" ", b":", b";", b"\x00", b"\xff", b"HTTP/1.1 ", b"HTTP/1.0 ", b"200 OK"),
    *(b"Content-Length: ", b"content-length:", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"),
    *(b"0", b"1", b"7", b"10", b"ff", b"FFFFFFFF", b"-1", b"+1", b"0x1", b"1_0", b"\xd9\xa3", b"x"),
]
chunk = st.tuples(
    st.one_of(st.integers(min_value=0, max_value=17), st.sampled_from([255, 256, 4095]), st.integers(0, 300)),
    st.sampled_from([b"", b";x=1", b" ", b"\n", b"-"]),
    st.integers(min_value=-2, max_value=2),  # data shorter or longer than the size says
    st.sampled_from([b"\r\n", b"", b"\n", b"xx"]),
).map(lambda c: b"%x%s\r\n%s%s" % (c[0], c[1], b"d" * max(c[0] + c[2], 0), c[3]))
answers = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=6)), max_size=40).map(b"".join),
    st.lists(st.one_of(chunk, st.sampled_from(FRAGMENTS)), max_size=8).map(b"".join),
)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(PREFIXES), answers, st.lists(st.integers(min_value=0), max_size=6))
def test_any_bytes_are_a_bounded_answer_or_an_exchange_error(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    try:
        status, body = parse(prefix + data, cuts)
    except sidecar.ExchangeError:
        return
    assert 0 <= status <= 999 and len(body) <= sidecar.MAX_BODY
    assert body == b"" or status == 200


TOKEN_CHARACTERS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_names = st.text(TOKEN_CHARACTERS, min_size=1, max_size=12).filter(
    lambda name: name.lower() not in ("content-length", "transfer-encoding")
)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


bodies = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=250)).map(lambda t: t[0] * t[1]),
)


class BytesSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


@settings(max_examples=600, deadline=None)
@given(
    status=st.sampled_from([200, 200, 200, 201, 401, 403, 503]),
    reason=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    body=bodies,
    framing=st.sampled_from(["length", "chunked", "close"]),
    chunks=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8),
    extension=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_well_formed_answers_read_as_http_client_reads_them(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    framing: str,
    chunks: list[int],
    extension: bool,
    cuts: list[int],
) -> None:
    head = [f"{name}: {value}" for name, value in headers]
    payload = body
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        parts, rest = [], body
        for size in chunks:
            if rest:
                piece, rest = rest[:size], rest[size:]
                parts.append(b"%x%s\r\n%s\r\n" % (len(piece), b";x=1" if extension else b"", piece))
        if rest:
            parts.append(b"%X\r\n%s\r\n" % (len(rest), rest))
        payload = b"".join(parts) + b"0\r\n\r\n"
    data = f"HTTP/1.1 {status} {reason}\r\n".encode() + "".join(f"{h}\r\n" for h in head).encode() + b"\r\n"
    data += payload
    expected = http.client.HTTPResponse(BytesSocket(data))  # type: ignore[arg-type]
    expected.begin()
    assert parse(data, cuts) == (expected.status, expected.read() if expected.status == 200 else b"")


URLS = [
    "https://sts.kube-sts.svc/aws/token",
    "https://sts.kube-sts.svc:8443/aws/token",
    "HTTPS://STS.Example:443/a/b?query=1#fragment",
    "https://127.0.0.1:1234",
    "https://user:secret@host.example:99/p",
    "https://[::1]:8443/token",
    "https://[fe80::1]/x",
    "https://host?x=/y",
    "https://host#/y",
    "https://host:/x",
    "https://host:0/x",
]


@pytest.mark.parametrize("url", URLS)
def test_split_url_reads_urls_as_urllib_does(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert sidecar.split_url(url) == (parts.hostname, parts.port or 443, parts.path or "/")


@pytest.mark.parametrize(
    "url",
    [
        "http://host/token",
        "host/token",
        "https:/host/token",
        "https:///token",
        "https://host:99999/x",
        "https://host:12a/x",
        "https://[::1/x",
        "https://[::1]x/y",
        "https://ho st/x",
        "https://host/x\r\nX-Injected: 1",
        "https://hôst/x",
        "",
    ],
)
def test_split_url_refuses_what_it_cannot_request(url: str) -> None:
    with pytest.raises(sidecar.ExchangeError, match="--url must be an https:// URL"):
        sidecar.split_url(url)


def test_answers_that_are_not_a_token_are_exchange_errors(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    sa = tmp_path / "sa"
    sa.write_text(SA_TOKEN)
    args = sidecar.parse_arguments(["--url", "https://h/t", "--service-account-token", str(sa), "--token-file", "t"])
    for body, message in [
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[]", "no token"),
        (json.dumps({"token": "\u00e9" + jwt(2_000_000_000)}).encode(), "no token"),
        (json.dumps({"token": "a.b.c"}).encode(), "no token"),
    ]:
        monkeypatch.setattr(sidecar, "post", lambda *_, body=body: (200, body))
        with pytest.raises(sidecar.ExchangeError, match=message):
            sidecar.exchange(args, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    for content, message in [(b"\xff\xfe", "not ASCII"), (b"a\x00b", "control characters")]:
        sa.write_bytes(content)
        with pytest.raises(sidecar.ExchangeError, match=message):
            sidecar.exchange(args, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


# -- the command line ------------------------------------------------------------------------------


def test_injected_command_lines_load_no_heavy_modules() -> None:
    probe = (
        "import sys; from kube_sts.runtime import sidecar;"
        "a = sidecar.parse_arguments(['--url', 'https://s/aws/token', '--service-account-token', '/sa',"
        " '--token-file', '/t', '--ca-env', 'KUBE_STS_CA', '--once']);"
        "b = sidecar.parse_arguments(['--check', '--token-file', '/t']);"
        "assert a.once and a.ca_env == 'KUBE_STS_CA' and b.check and b.token_file == '/t';"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    )
    assert not loaded & {"http.client", "email", "email.parser", "urllib.request", "random", "threading"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--check"], "the following arguments are required: --token-file"),
        (["--token-file", "/t", "--bogus"], "unrecognized arguments: --bogus"),
        (["--token-file", "/t"], "--url and --service-account-token are required unless --check"),
        (["--url", "u", "--service-account-token", "s", "--token-file", "t", "--refresh-fraction", "2"], "between"),
        (["--token-file", "/t", "--max-backoff", "x"], "invalid float value: 'x'"),
        (["--url", "u", "--service-account-token", "s", "--token-file", "t", "--max-backoff", "0"], "between"),
        (["--url", "u", "--service-account-token", "s", "--token-file", "t", "--max-backoff", "nan"], "between"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        sidecar.main(argv)
    assert caught.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("kube-sts-sidecar: error: ") and message in stderr
    assert stderr.endswith(" (see --help)\n") and stderr.count("\n") == 1


# -- a process against a token service that answers garbage ---------------------------------------


class RawService:
    """A TLS server that sends scripted raw answers, then good tokens (lifetime 4 s)."""

    def __init__(self, tls: harness.TLSFiles, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.context = tls.server_context()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}/aws/token"
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closed.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), self.context.wrap_socket(raw, server_side=True) as connection:
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = connection.recv(4096)
                    if not data:
                        break
                    request += data
                self.calls += 1
                if self.answers:
                    connection.sendall(self.answers.pop(0))
                else:
                    body = json.dumps({"token": jwt(int(time.time()) + 4)}).encode()
                    connection.sendall(answer(body, f"Content-Length: {len(body)}"))

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> harness.TLSFiles:
    return harness.make_tls(tmp_path / "tls")


def sidecar_command(url: str, tls: harness.TLSFiles, tmp_path: pathlib.Path, *extra: str) -> list[str]:
    (tmp_path / "sa").write_text(SA_TOKEN + "\n")
    (tmp_path / "out").mkdir(exist_ok=True)
    return [
        *(sys.executable, "-m", "kube_sts.runtime.sidecar", "--url", url),
        *("--service-account-token", str(tmp_path / "sa"), "--token-file", str(tmp_path / "out" / "token")),
        *("--ca-file", str(tls.ca), "--max-backoff", "0.3", *extra),
    ]


BAD_ANSWERS = [
    b"garbage\r\n\r\n",
    answer(b"{}", "Content-Length: 5"),  # truncated
    answer(b"", f"Content-Length: {sidecar.MAX_BODY + 1}"),
    answer(b"", "X: " + "y" * sidecar.MAX_HEAD),
    answer(b"not json", "Content-Length: 8"),
    b"HTTP/1.1 200 OK\r\nContent-Len",  # closed within the headers
]


@pytest.fixture
def raw_service(tls: harness.TLSFiles) -> Iterator[RawService]:
    service = RawService(tls, [])
    yield service
    service.close()


def test_once_retries_past_bad_answers(raw_service: RawService, tls: harness.TLSFiles, tmp_path: pathlib.Path) -> None:
    raw_service.answers = list(BAD_ANSWERS)
    result = subprocess.run(
        sidecar_command(raw_service.url, tls, tmp_path, "--once"),
        check=False,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert raw_service.calls == len(BAD_ANSWERS) + 1
    assert result.stderr.count("exchange failed") == len(BAD_ANSWERS) and "Traceback" not in result.stderr
    assert sidecar.valid_on_disk(str(tmp_path / "out" / "token"), time.time(), margin=0) is not None
    assert SA_TOKEN not in result.stderr


def test_loop_keeps_the_last_good_token_through_bad_answers(
    raw_service: RawService, tls: harness.TLSFiles, tmp_path: pathlib.Path
) -> None:
    token_file = tmp_path / "out" / "token"
    process = subprocess.Popen(sidecar_command(raw_service.url, tls, tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not token_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        last = token_file.read_text()
        raw_service.answers = BAD_ANSWERS * 3  # the refresh (at about 2 s) meets only bad answers for a while
        while raw_service.answers:
            assert time.monotonic() < deadline + 30 and process.poll() is None
            assert token_file.read_text() == last
            time.sleep(0.05)
        while token_file.read_text() == last:  # then a good answer replaces the token
            assert time.monotonic() < deadline + 45 and process.poll() is None
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and stderr.count("exchange failed") >= len(BAD_ANSWERS) * 3
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["token"]


def test_sigterm_during_backoff_exits_0_at_once(tls: harness.TLSFiles, tmp_path: pathlib.Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens on the port: every attempt fails at once
    command = sidecar_command(f"https://127.0.0.1:{port}/aws/token", tls, tmp_path, "--max-backoff", "60")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # attempts at 0, ~1, ~3 s; then waits ~4 s
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 2
    assert "token service unreachable" in stderr
