"""How ``docker compose`` reads the ``stack.env`` Portainer writes: a line-by-line port of
compose-go v2.1.6 (the version docker compose v2.29.2 uses, which Portainer 2.21.4 bundles:
``binary-version.json``), ``dotenv/parser.go`` and ``template/template.go``.

``parse(text, lookup)`` is ``dotenv.UnmarshalWithLookup``: unquoted values end at `` #`` and
lose trailing white space, ``$NAME``/``${NAME}`` are interpolated (``lookup`` first, then the
variables above), double-quoted values expand ``\\n``, ``\\$`` and the like. ``substitute`` is
``template.Substitute``, which compose also applies to every string of the compose file.
``dotenv_cases.json`` holds what the real Go code (built from those sources) returned for a
corpus of env files; ``test_stacks_lab`` checks this port against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Lookup = Callable[[str], str | None]


class DotenvError(ValueError):
    pass


# -- template/template.go ------------------------------------------------------------------------
_NAMED = "[_a-z][_a-z0-9]*"
_BRACED = "[_a-z][_a-z0-9]*(?::?[-+?](.*))?"
# patternString: \$(?i:(?P<escaped>\$)|(?P<named>..)|{(?:(?P<braced>..)}|(?P<invalid>)))
PATTERN = re.compile(rf"\$(?i:(?P<escaped>\$)|(?P<named>{_NAMED})|{{(?:(?P<braced>{_BRACED})}}|(?P<invalid>)))")


class MissingRequired(ValueError):
    """template.MissingRequiredError."""

    def __init__(self, variable: str, reason: str):
        self.variable, self.reason = variable, reason
        super().__init__(f"required variable {variable} is missing a value" + (f": {reason}" if reason else ""))


class InvalidTemplate(ValueError):
    """template.InvalidTemplateError (its template is the whole text being substituted)."""

    def __init__(self, template: str = ""):
        self.template = template
        super().__init__(template)

    def __str__(self) -> str:
        return f"Invalid template: {_go_quote(self.template)}"


def _partition(s: str, sep: str) -> tuple[str, str]:
    return tuple(s.split(sep, 1)) if sep in s else (s, "")  # type: ignore[return-value]


def _with_default_absence(sub: str, mapping: Lookup, empty_or_unset: bool):
    sep = ":-" if empty_or_unset else "-"
    if sep not in sub:
        return "", False
    name, default = _partition(sub, sep)
    default = substitute(default, mapping)
    value = mapping(name)
    if value is None or (empty_or_unset and value == ""):
        return default, True
    return value, True


def _with_default_presence(sub: str, mapping: Lookup, not_empty: bool):
    sep = ":+" if not_empty else "+"
    if sep not in sub:
        return "", False
    name, default = _partition(sub, sep)
    default = substitute(default, mapping)
    value = mapping(name)
    if value is not None and (not not_empty or value != ""):
        return default, True
    return value or "", True


def _with_required(sub: str, mapping: Lookup, sep: str, valid: Callable[[str], bool]):
    if sep not in sub:
        return "", False
    name, message = _partition(sub, sep)
    message = substitute(message, mapping)
    value = mapping(name)
    if value is None or not valid(value):
        raise MissingRequired(name, message)
    return value, True


_MODIFIERS = [(":?", lambda s, m: _with_required(s, m, ":?", lambda v: v != "")),
              ("?", lambda s, m: _with_required(s, m, "?", lambda v: True)),
              (":-", lambda s, m: _with_default_absence(s, m, True)),
              ("-", lambda s, m: _with_default_absence(s, m, False)),
              (":+", lambda s, m: _with_default_presence(s, m, True)),
              ("+", lambda s, m: _with_default_presence(s, m, False))]


def _modifier_for(template: str):
    """getSubstitutionFunctionForTemplate: the modifier found first in the text (stable sort)."""
    def key(item):
        i = template.find(item[0])
        return (1, 0) if i < 0 else (0, i)
    return sorted(_MODIFIERS, key=key)[0][1]


def _first_brace_closing(s: str) -> int:
    """getFirstBraceClosingIndex."""
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        if s[i] == "{":
            depth += 1
            i += 1
        i += 1
    return -1


def _replace(substring: str, mapping: Lookup, warnings: list[str]) -> str:
    """DefaultReplacementAppliedFunc."""
    subs_func = _modifier_for(substring)
    closing = _first_brace_closing(substring)
    rest = ""
    if closing > -1:
        rest, substring = substring[closing + 1:], substring[:closing + 1]
    m = PATTERN.match(substring)
    groups = m.groupdict() if m else {}
    if groups.get("escaped"):
        return groups["escaped"]
    braced = False
    substitution = groups.get("named") or ""
    if not substitution:
        substitution, braced = groups.get("braced") or "", True
    if not substitution:
        raise InvalidTemplate()
    if braced:
        value, applied = subs_func(substitution, mapping)
        if applied:
            return value + substitute(rest, mapping, warnings)
    value = mapping(substitution)
    if value is None:
        warnings.append(f'The "{substitution}" variable is not set. Defaulting to a blank string.')
    return value or ""


def substitute(template: str, mapping: Lookup, warnings: list[str] | None = None) -> str:
    """template.Substitute (SubstituteWithOptions with the default pattern); the first error raises."""
    warnings = [] if warnings is None else warnings
    errors: list[Exception] = []

    def one(m: re.Match) -> str:
        try:
            return _replace(m.group(0), mapping, warnings)
        except (MissingRequired, InvalidTemplate) as err:
            if isinstance(err, InvalidTemplate) and not err.template:
                err.template = template
            errors.append(err)
            return ""
    out = PATTERN.sub(one, template)
    if errors:
        raise errors[0]
    return out


# -- dotenv/parser.go ----------------------------------------------------------------------------
_ESCAPE_SEQ = re.compile(r'(\\(?:[abcfnrtv$"\\]|0\d{0,3}))')
_EXPORT = re.compile(r"^export\s+")
_SPACE = "\t\v\f\r \x85\xa0"        # isSpace: white space but not a line break


def _go_space(c: str) -> bool:
    """unicode.IsSpace (Python's isspace also counts \\x1c-\\x1f)."""
    return c in "\t\n\v\f\r \x85\xa0" if c <= "\xff" else c.isspace()


def _rstrip_space(s: str) -> str:
    """strings.TrimRightFunc(s, unicode.IsSpace)."""
    end = len(s)
    while end and _go_space(s[end - 1]):
        end -= 1
    return s[:end]


def _go_quote(s: str) -> str:
    """Go's %q, for the text of an error message (strconv.Quote: IsPrint, else an escape)."""
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\v": "\\v", '"': '\\"', "\\": "\\\\"}
    out = []
    for c in s:
        if c in named:
            out.append(named[c])
        elif c.isprintable():                   # Python's and Go's printable agree
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\", '"': '"'}


def _expand_escapes(value: str) -> str:
    """expandEscapes: ``\\$`` becomes ``$$`` (interpolation's own escape), the rest as Go unquotes them."""
    def one(m: re.Match) -> str:
        match = m.group(0)
        if match == "\\$":
            return "$$"
        if match.startswith("\\0"):
            match = "\\" + match[2:]                # \0123 -> \123 (octal) for strconv.UnquoteChar
            digits = match[1:]
            if len(digits) == 3 and all(c in "01234567" for c in digits) and int(digits, 8) <= 255:
                return chr(int(digits, 8))
            return match                            # UnquoteChar fails: the rewritten match stays
        return _GO_ESCAPES[match[1]]
    return _ESCAPE_SEQ.sub(one, value)


class _Parser:
    def __init__(self):
        self.line = 1

    def statement_start(self, src: str) -> str:
        while True:
            pos = self.index_of_non_space(src)
            if pos == -1:
                return ""
            src = src[pos:]
            if src[0] != "#":
                return src
            pos = src.find("\n")
            if pos == -1:
                return ""
            src = src[pos:]

    def index_of_non_space(self, src: str) -> int:
        for i, c in enumerate(src):
            if c == "\n":
                self.line += 1
            if not _go_space(c):
                return i
        return -1

    def key_name(self, src: str) -> tuple[str, str, bool]:
        if _EXPORT.match(src):
            src = src[len("export"):].lstrip(_SPACE)
        key, offset, inherited = "", 0, False
        for i, c in enumerate(src):
            if c in _SPACE:
                continue
            if c in "=:\n":             # the library also reads yaml-style KEY: value
                key, offset, inherited = src[:i], i + 1, c == "\n"
                break
            if c in "_.-[]" or c.isalpha() or c.isnumeric():
                continue
            raise DotenvError(f"line {self.line}: unexpected character {_go_quote(c)} in variable name "
                              f"{_go_quote(src.split(chr(10))[0])}")
        if src == "":
            raise DotenvError("zero length string")
        return _rstrip_space(key), src[offset:].lstrip(_SPACE), inherited

    def value(self, src: str, env: dict, lookup: Lookup) -> tuple[str, str]:
        quote = src[0] if src[:1] in ("'", '"') else None
        mapping = _mapping(env, lookup)
        if quote is None:
            value, _, rest = src.partition("\n")
            self.line += 1
            value = _rstrip_space(value.split(" #", 1)[0])   # inline comments on unquoted lines
            return substitute(value, mapping), rest
        escaped, chars = False, []
        for i in range(1, len(src)):
            c = src[i]
            if c == "\n":
                self.line += 1
            if c != quote:
                if not escaped and c == "\\":
                    escaped = True
                    continue
                if escaped:
                    escaped = False
                    chars.append("\\")
                chars.append(c)
                continue
            if escaped:                 # an escaped quote of the same kind
                escaped = False
                chars.append(c)
                continue
            value = "".join(chars)
            if quote == '"':            # escapes first, then interpolation
                value = substitute(_expand_escapes(value), mapping)
            return value, src[i + 1:]
        end = src.find("\n")
        raise DotenvError(f"line {self.line}: unterminated quoted value {src[:end if end >= 0 else len(src)]}")


def _mapping(env: dict, lookup: Lookup) -> Lookup:
    """expandVariables: the lookup (the process environment) first, then what the file set above."""
    def get(k: str) -> str | None:
        v = lookup(k)
        return v if v is not None else env.get(k)
    return get


def parse(text: str, lookup: Lookup = lambda k: None) -> dict[str, str]:
    """dotenv.UnmarshalWithLookup (ParseWithLookup drops a UTF-8 BOM first)."""
    p, out, cutset = _Parser(), {}, text.removeprefix("\ufeff")
    while True:
        cutset = p.statement_start(cutset)
        if cutset == "":
            return out
        key, left, inherited = p.key_name(cutset)
        if " " in key:
            raise DotenvError(f"line {p.line}: key cannot contain a space")
        if inherited:
            value = lookup(key)
            if value is not None:
                out[key] = value
            cutset = left
            continue
        out[key], cutset = p.value(left, out, lookup)
