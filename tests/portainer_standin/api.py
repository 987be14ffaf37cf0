"""The HTTP plumbing of the stand-in, as Portainer's libraries behave.

* Errors (``pkg/libhttp/error/error.go`` ``writeErrorResponse``): the status and
  ``{"message", "details"}``; details is the cause, or the message capitalized when there is
  none; empty fields are left out.
* JSON payloads (``pkg/libhttp/request/payload.go`` ``DecodeAndValidateJSONPayload``): the body
  is decoded whatever its Content-Type says, into a Go struct: field names match without
  regard to case, unknown fields are ignored (a ``Prune`` sent to a compose stack update is
  dropped silently), a value of the wrong type is a 400.
* Form fields (``request.RetrieveMultiPartFormValue``): Go's ``FormValue``, multipart or
  url-encoded body, and the query string.
"""

from __future__ import annotations

import email.parser
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


class HandlerError(Exception):
    """httperror.HandlerError: an answer other than success."""

    def __init__(self, status: int, message: str, details: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        cause = details if details is not None else message
        self.details = cause[:1].upper() + cause[1:]

    def body(self) -> dict:
        return {k: v for k, v in (("message", self.message), ("details", self.details)) if v}


def bad_request(details: str) -> HandlerError:
    return HandlerError(400, "Invalid request payload", details)


_GO_TYPES = {str: "string", bool: "bool", int: "int", list: "slice", dict: "map"}


def decode(body: bytes, fields: dict[str, type], struct: str) -> dict[str, Any]:
    """A JSON body into the named Go struct fields (zero values for the missing ones)."""
    try:
        doc = json.loads(body or b"")
    except json.JSONDecodeError:
        raise bad_request("EOF" if not body.strip() else "invalid character in JSON payload") from None
    if not isinstance(doc, dict):
        raise bad_request(f"json: cannot unmarshal {type(doc).__name__} into Go value of type {struct}")
    out: dict[str, Any] = {name: t() for name, t in fields.items()}
    by_lower = {name.lower(): name for name in fields}
    for key, value in doc.items():
        name = by_lower.get(key.lower())
        if name is None or value is None:
            continue
        want = fields[name]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise bad_request(f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                              f"{struct}.{name} of type {_GO_TYPES[want]}")
        out[name] = value
    return out


def pairs(values: list) -> list[dict]:
    """``[]portainer.Pair``: ``{"name", "value"}`` objects (field names in any case)."""
    out = []
    for v in values:
        if not isinstance(v, dict):
            raise bad_request("json: cannot unmarshal into Go struct field of type portainer.Pair")
        low = {k.lower(): x for k, x in v.items()}
        out.append({"name": str(low.get("name") or ""), "value": str(low.get("value") or "")})
    return out


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    address: str
    match: re.Match | None = None
    token: dict | None = None

    def query_int(self, name: str, optional: bool = False) -> int:
        """request.RetrieveNumericQueryParameter."""
        value = (self.query.get(name) or [""])[0]
        if value == "" and optional:
            return 0
        try:
            return int(value)
        except ValueError:
            raise HandlerError(400, f"Invalid query parameter: {name}", "Invalid query parameter") from None

    def form(self) -> dict[str, str]:
        """What ``FormValue`` sees: the body's fields (multipart or url-encoded), then the query."""
        ctype = self.headers.get("Content-Type") or ""
        out: dict[str, str] = {}
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + self.body)
            for part in msg.get_payload() if msg.is_multipart() else []:
                name = part.get_param("name", header="content-disposition")
                if name and name not in out:
                    out[name] = (part.get_payload(decode=True) or b"").decode(errors="replace")
        elif ctype.startswith("application/x-www-form-urlencoded"):
            out.update({k: v[0] for k, v in parse_qs(self.body.decode(errors="replace")).items()})
        for k, v in self.query.items():
            out.setdefault(k, v[0])
        return out

    def file(self, name: str) -> bytes | None:
        """request.RetrieveMultiPartFormFile: an uploaded file part (with a file name)."""
        ctype = self.headers.get("Content-Type") or ""
        if not ctype.startswith("multipart/form-data"):
            return None
        msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + self.body)
        for part in msg.get_payload() if msg.is_multipart() else []:
            if part.get_param("name", header="content-disposition") == name and part.get_filename():
                return part.get_payload(decode=True)
        return None


Handler = Callable[[Request], Any]


@dataclass
class Route:
    method: str
    pattern: re.Pattern
    handler: Handler
    access: str                  # public, authenticated


@dataclass
class Router:
    routes: list[Route] = field(default_factory=list)
    #: one request at a time (Portainer serializes stack work with its own mutexes; the
    #: stand-in keeps every state change simple by doing the same for everything)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, pattern: str, access: str = "authenticated"):
        def register(fn: Handler) -> Handler:
            self.routes.append(Route(method, re.compile(pattern + "$"), fn, access))
            return fn
        return register

    def find(self, method: str, path: str) -> tuple[Route | None, re.Match | None]:
        allowed = False
        for r in self.routes:
            m = r.pattern.match(path)
            if m:
                if r.method == method:
                    return r, m
                allowed = True
        if allowed:
            raise HandlerError(405, "Method Not Allowed", "")
        return None, None


def split_url(raw: str) -> tuple[str, dict[str, list[str]]]:
    url = urlsplit(raw)
    return url.path, parse_qs(url.query, keep_blank_values=True)
