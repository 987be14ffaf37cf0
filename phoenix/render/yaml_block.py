"""YAML text for configuration data: byte for byte what PyYAML's safe dumper writes, faster.

Traefik's dynamic file for a lab of 1,000 resources is over half a megabyte, and PyYAML
represents every node in Python: about a quarter of a second, where ``json`` takes a hundredth.
Configuration data is dicts, lists, numbers and short strings that PyYAML writes plain or
single-quoted, and those this module writes itself. Anything else (a string PyYAML would quote or fold, a float, a
container used twice, which PyYAML would anchor, text beyond printable ASCII) sends the whole document to PyYAML, so the
text is always PyYAML's. tests/test_yaml_block.py holds the two to the same bytes.

Options are PyYAML's ``default_flow_style=False, sort_keys=False`` with ``width``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

#: libyaml's emitter where it is installed (same text), else PyYAML's own
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
#: first characters that make PyYAML quote a string (indicators); ``?``, ``:`` and ``-`` only
#: when a space or the end follows
_LEADING = frozenset("#,[]{}&*!|>'\"%@`")
#: PyYAML's simple keys are shorter than 128 characters; longer keys it writes as ``? key``
_KEY_MAX = 100
_resolver = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"


class _Unsupported(Exception):
    """The document holds something only PyYAML knows how to write."""


def dump(doc: Any, width: int = 80, dumper: type = _DUMPER) -> str:
    """``yaml.dump(doc, Dumper=dumper, sort_keys=False, default_flow_style=False, width=width)``.
    ``dumper``: a safe dumper, or one whose own representers change only multi-line strings
    (those always go to PyYAML)."""
    try:
        return _Writer(width).document(doc)
    except _Unsupported:
        return yaml.dump(doc, Dumper=dumper, sort_keys=False, default_flow_style=False, width=width)


class _Writer:
    def __init__(self, width: int):
        self.width = width
        self.lines: list[str] = []
        self.seen: set[int] = set()
        self.plain: dict[str, bool] = {}

    def document(self, doc: Any) -> str:
        if type(doc) is dict and doc:
            self.mapping(doc, 0, "")
        elif type(doc) is list and doc:
            self.sequence(doc, 0, "")
        else:
            raise _Unsupported
        return "\n".join(self.lines) + "\n"

    def container(self, value: Any) -> None:
        # PyYAML anchors a dict or list it meets twice (``&id001``): leave those documents to it.
        if id(value) in self.seen:
            raise _Unsupported
        self.seen.add(id(value))

    def mapping(self, value: dict, indent: int, first: str) -> None:
        """``value``'s entries at ``indent``; the first one after ``first`` (a ``- `` of its list)."""
        self.container(value)
        pad = " " * indent
        lead = first
        for key, item in value.items():
            if type(key) is not str or not key or len(key) > _KEY_MAX or not _PRINTABLE.fullmatch(key):
                raise _Unsupported
            prefix = f"{lead}{self.quoted(key)}:"
            lead = pad
            if type(item) is dict and item:
                self.lines.append(prefix)
                self.mapping(item, indent + 2, " " * (indent + 2))
            elif type(item) is list and item:
                self.lines.append(prefix)
                self.sequence(item, indent, pad)     # PyYAML does not indent a list under a key
            else:
                self.lines.append(f"{prefix} {self.scalar(item, len(prefix) + 1)}")

    def sequence(self, value: list, indent: int, first: str) -> None:
        self.container(value)
        pad = " " * indent
        lead = first
        for item in value:
            prefix = f"{lead}- "
            lead = pad
            if type(item) is dict and item:
                self.mapping(item, indent + 2, prefix)
            elif type(item) is list and item:
                self.sequence(item, indent + 2, prefix)
            else:
                self.lines.append(prefix + self.scalar(item, len(prefix)))

    def scalar(self, value: Any, column: int) -> str:
        if value is None:
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        if type(value) is int:
            return str(value)
        if type(value) is dict:
            self.container(value)
            return "{}"
        if type(value) is list:
            self.container(value)
            return "[]"
        if type(value) is not str or (value and not _PRINTABLE.fullmatch(value)):
            raise _Unsupported
        # PyYAML folds a plain or quoted string at a space once the line is past the width.
        if column + len(value) > self.width and " " in value:
            raise _Unsupported
        return self.quoted(value)

    def quoted(self, text: str) -> str:
        """Plain where PyYAML writes it so, else single-quoted, as PyYAML does for a printable
        one-line string ('443', 'yes', '', 'a: b')."""
        return text if text and self.is_plain(text) else "'" + text.replace("'", "''") + "'"

    def is_plain(self, text: str) -> bool:
        """Whether PyYAML writes ``text`` as a plain scalar (its ``analyze_scalar`` rules for a
        one-line printable ASCII string, and its resolver reading the text back as a string)."""
        known = self.plain.get(text)
        if known is None:
            known = self.plain[text] = (
                bool(_PRINTABLE.fullmatch(text))
                and text[0] != " " and text[-1] != " "
                and text[0] not in _LEADING
                and not (text[0] in "?:-" and (len(text) == 1 or text[1] == " "))
                and not text.startswith(("---", "..."))
                and ": " not in text[1:] and not (len(text) > 1 and text[-1] == ":") and " #" not in text
                and _resolver.resolve(yaml.ScalarNode, text, (True, False)) == _STR_TAG)
        return known
