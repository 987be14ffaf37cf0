"""Field types every part of the model shares: labels, domains, ports, addresses, roles, pinned images.

Each validator raises ``ValueError`` with one sentence; ``phoenix.model.parse`` turns it into
a ``phoenix:<key path>: <sentence>`` line. Every pattern is matched whole (``fullmatch``, ASCII
classes): a pattern ending in ``$`` would accept a trailing newline, and ``\\d`` any script's
digits. The model is strict (``Strict``): no value is coerced into another type (``true`` is not
port 1, ``"8000"`` is not a number, ``"yes"`` is not a boolean).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

#: the longest text any key holds (a command, a URL, an environment value): longer is a mistake.
MAX_TEXT = 4096
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: characters no value may hold, by Unicode category: control (C0, DEL, C1: a CR or NUL ends a
#: line of a systemd unit, a zone file, a YAML scalar), format (bidi overrides, zero-width
#: characters: text that reads other than it is), surrogates, line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ASCII_SAFE = re.compile(r"[\x20-\x7e]*")
_CHAR_NAMES = {"\0": "NUL", "\t": "tab", "\n": "line feed", "\r": "carriage return", "\x7f": "DEL"}


def unsafe_character(value: str) -> str | None:
    """The first character of ``value`` no config value may hold, named ("U+000D carriage
    return"), or None."""
    if _ASCII_SAFE.fullmatch(value):
        return None
    for ch in value:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            name = _CHAR_NAMES.get(ch) or unicodedata.name(ch, "control character").lower()
            return f"U+{ord(ch):04X} {name}"
    return None


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error line may quote it: escaped (one line, whatever it holds) and short."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def _hostname_label(value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a valid host name label "
                         "(lowercase letters, digits and '-', 1-63 characters, no leading or trailing '-')")
    return value


def _domain(value: str) -> str:
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253 or not all(_LABEL.fullmatch(lbl) for lbl in labels):
        raise ValueError(f"{shown(value)} is not a valid domain name")
    return name


def _text_rule(pattern: str, what: str, max_length: int = 255) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_length or not compiled.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {what}")
        return value
    return AfterValidator(check)


def matching(pattern: str, what: str, max_length: int = 255) -> tuple[FieldInfo, AfterValidator]:
    """The rules of a string matched whole by ``pattern`` (ASCII classes), at most ``max_length``
    characters, for ``Annotated[str, *matching(...)]`` (a type the type checker reads as ``str``)."""
    # JSON Schema patterns search (they are not anchored): an editor needs the anchors.
    return (Field(max_length=max_length, json_schema_extra={"pattern": f"^(?:{pattern})$"}),
            _text_rule(pattern, what, max_length))


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    if isinstance(value, ipaddress.IPv4Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an IPv4 address written as a string, not {type(value).__name__} {shown(value)}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not an IPv4 address") from None


def _ipv4_network(value: Any) -> ipaddress.IPv4Network:
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an IPv4 network written as a string (10.0.0.0/24), not {type(value).__name__}")
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as err:
        raise ValueError(f"{shown(value)} is not an IPv4 network: {err}") from None


Label = Annotated[str, AfterValidator(_hostname_label)]
Domain = Annotated[str, AfterValidator(_domain)]
Port = Annotated[int, Field(ge=1, le=65535)]
IPv4 = ipaddress.IPv4Address
#: an IPv4 address, given as a string (an integer is not an address).
Address = Annotated[ipaddress.IPv4Address, PlainValidator(_ipv4),
                    WithJsonSchema({"type": "string", "format": "ipv4"})]
#: an IPv4 network in CIDR notation, host bits zero.
Network = Annotated[ipaddress.IPv4Network, PlainValidator(_ipv4_network),
                    WithJsonSchema({"type": "string", "format": "ipv4-network"})]
Role = Literal["dns", "gateway", "mesh", "ca", "gpu", "portainer", "agent"]
#: a release version as the download URLs and scripts name it (1.2.3).
Version = Annotated[str, *matching(r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}", "a release version (1.2.3)", 32)]
Sha256 = Annotated[str, *matching(r"[0-9a-f]{64}", "a sha256 (64 lowercase hex digits)", 64)]
StorageId = Annotated[str, *matching(r"[A-Za-z][A-Za-z0-9._-]{0,63}", "a Proxmox storage id", 64)]
Email = Annotated[str, *matching(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+",
                                 "an e-mail address", 254)]

#: roles that are LXCs; the rest are VMs (Docker needs a kernel of its own).
LXC_ROLES = {"dns", "gateway", "mesh", "ca", "gpu"}
#: roles the architecture needs exactly once.
SINGLETON_ROLES = ("dns", "gateway", "mesh", "ca")


class Strict(BaseModel):
    """Every section: unknown keys refused, nothing coerced (``strict``), read by camelCase alias."""
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              frozen=True, strict=True)


_IMAGE_NAME = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?"          # registry[:port]/
                         r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")


def pinned_image(value: str) -> str:
    """An image pinned by tag (not ``latest``) or by digest: what runs is what was reviewed."""
    if len(value) > 512:
        raise ValueError(f"image {shown(value)} is longer than 512 characters")
    name, at, digest = value.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    repo = name[:len(name) - len(tag) - 1] if tag else name
    if not _IMAGE_NAME.fullmatch(repo):
        raise ValueError(f"{shown(value)} is not an image reference (registry/name:tag or name@sha256:digest)")
    if at:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"image {shown(value)}: a digest pin is @sha256: and 64 lowercase hex digits")
    elif not tag:
        raise ValueError(f"image {shown(value)} is not pinned: give a version tag ({repo}:1.2.3) or a digest "
                         f"({repo}@sha256:...)")
    elif tag == "latest":
        raise ValueError(f"image {shown(value)} is not pinned: 'latest' moves; give a version tag or a digest")
    if tag and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ValueError(f"image {shown(value)} has an invalid tag {shown(tag)}")
    return value
