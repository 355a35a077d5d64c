"""A strict reader of RFC 9651 Structured Field Values: Lists and
Dictionaries of Items (Integers, Decimals, Strings, Tokens, Byte Sequences,
Booleans) with Parameters.  Inner Lists, Dates and Display Strings are not
read.  Any deviation from the grammar raises ValueError: a field that
fails to parse is to be ignored whole (RFC 9651 section 4.2), which is
what the client throttle does with a server's ``RateLimit`` fields.

Example:
    >>> parse_list('"api";r=0;t=30, "x;t=9999";r=5')
    [('api', {'r': 0, 't': 30}), ('x;t=9999', {'r': 5})]
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal

__all__ = ["BareItem", "Parameters", "Token", "parse_dictionary", "parse_list"]


class Token(str):
    """A Token bare item (kept apart from a String)."""


BareItem = int | Decimal | str | Token | bytes | bool
Parameters = dict[str, BareItem]

_INTEGER = re.compile(r"-?[0-9]{1,15}")
_DECIMAL = re.compile(r"-?[0-9]{1,12}\.[0-9]{1,3}")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_BOOLEAN = re.compile(r"\?[01]")


class _Reader:
    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise ValueError(f"a structured field is ASCII, got {text!r}")
        # leading and trailing SP are discarded (section 4.2)
        self.text = text.strip(" ")
        self.i = 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def take(self, pattern: re.Pattern[str]) -> str:
        m = pattern.match(self.text, self.i)
        if not m:
            raise ValueError(f"unexpected {self.text[self.i:]!r} in {self.text!r}")
        self.i = m.end()
        return m.group()

    def bare_item(self) -> BareItem:
        c = self.peek()
        if c == '"':
            return self.string()
        if c == "?":
            return self.take(_BOOLEAN) == "?1"
        if c == ":":
            m = _BYTES.match(self.text, self.i)
            if not m:
                raise ValueError(f"bad byte sequence in {self.text!r}")
            self.i = m.end()
            data = m.group(1)
            if "=" not in data:
                # section 4.2.7: parsers SHOULD NOT fail when "=" padding is absent
                data += "=" * (-len(data) % 4)
            try:
                return base64.b64decode(data, validate=True)
            except binascii.Error:
                raise ValueError(f"bad byte sequence in {self.text!r}") from None
        if c == "-" or c.isdigit():
            decimal = _DECIMAL.match(self.text, self.i)
            if decimal:
                self.i = decimal.end()
                return Decimal(decimal.group())
            value = self.take(_INTEGER)
            if self.peek() == ".":
                raise ValueError(f"bad number in {self.text!r}")
            return int(value)
        if c.isalpha() or c == "*":
            return Token(self.take(_TOKEN))
        raise ValueError(f"no bare item at {self.text[self.i:]!r}")

    def string(self) -> str:
        self.i += 1
        out = []
        while True:
            c = self.peek()
            if c == "":
                raise ValueError(f"unterminated string in {self.text!r}")
            self.i += 1
            if c == "\\":
                nxt = self.peek()
                if nxt not in ('"', "\\"):
                    raise ValueError(f"bad escape in {self.text!r}")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise ValueError(f"bad character {c!r} in a string")
            else:
                out.append(c)

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.i += 1
            while self.peek() == " ":
                self.i += 1
            key = self.take(_KEY)
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            params[key] = value  # a repeated key: the last one wins
        return params

    def members(self, member: str) -> list[tuple[str, BareItem, Parameters]]:
        """Comma-separated members: ``(key, item, params)`` (key "" in a List)."""
        out: list[tuple[str, BareItem, Parameters]] = []
        if not self.text:
            return out
        while True:
            if member == "list":
                key, item = "", self.bare_item()
            else:
                key = self.take(_KEY)
                item = True
                if self.peek() == "=":
                    self.i += 1
                    item = self.bare_item()
            out.append((key, item, self.parameters()))
            while self.peek() in (" ", "\t"):
                self.i += 1
            if self.peek() == "":
                return out
            if self.peek() != ",":
                raise ValueError(f"expected ',' at {self.text[self.i:]!r}")
            self.i += 1
            while self.peek() in (" ", "\t"):
                self.i += 1
            if self.peek() == "":
                raise ValueError(f"a trailing comma in {self.text!r}")


def parse_list(text: str) -> list[tuple[BareItem, Parameters]]:
    """A List field value as ``[(bare_item, {param: value})]``.

    Raises:
        ValueError: it is not a List of Items.
    """
    return [(item, params) for _, item, params in _Reader(text).members("list")]


def parse_dictionary(text: str) -> dict[str, tuple[BareItem, Parameters]]:
    """A Dictionary field value as ``{key: (bare_item, {param: value})}``
    (a key without a value is True; a repeated key: the last one wins).

    Raises:
        ValueError: it is not a Dictionary of Items.
    """
    return {key: (item, params) for key, item, params in _Reader(text).members("dictionary")}
