"""A double of the runtime's token route for ``kube-sts-sidecar`` run as a process: short-lived
tokens on demand, a switch to fail, and a record of the calls and their bearers.

Used by tests/sidecar/, tests/adversarial/test_sidecar_token_file.py and bench/sidecar.py.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from typing import Any

from harness.runtime import TLSFiles

SA_TOKEN = "sa-token-for-the-test"


def jwt(exp: int, filler: int = 20000) -> str:
    def part(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'pad': 'x' * filler})}.sig"


class TokenService:
    """Answers POST /aws/token like the runtime: {"token", "expires_at", "expires_in"}."""

    def __init__(self, tls: TLSFiles, lifetime: int) -> None:
        self.lifetime = lifetime
        self.failing = False
        self.calls = 0
        self.bearers: list[str] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                service.calls += 1
                service.bearers.append(self.headers.get("Authorization", ""))
                if service.failing or self.path != "/aws/token":
                    self.send_response(503)
                    self.end_headers()
                    return
                exp = int(time.time()) + service.lifetime
                body = json.dumps({"token": jwt(exp), "expires_at": exp, "expires_in": service.lifetime}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = tls.server_context().wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/aws/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
