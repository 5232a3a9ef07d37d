"""Requests and responses as the token service's routes see them (independent of ASGI).

A route is an ``async (Request) -> Response`` callable registered with ``App.add_route``; it
raises ``HTTPError`` for an error answer, which the app renders as JSON
``{"error": "<stable code>", "message": "..."}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

__all__ = ["HTTPError", "Handler", "Request", "Response", "error_response", "json_response"]


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    """Lower-case names; repeated headers joined with ``,``."""
    body: bytes
    client: str


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class HTTPError(Exception):
    """An error answer: ``status``, a stable ``code`` and a message for humans."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_response(status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(document), headers=headers)


def error_response(status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": code, "message": message}, headers)


Handler = Callable[[Request], Awaitable[Response]]
