"""A strict parser for the part of RFC 9651 (Structured Field Values) that
the RateLimit fields use: a List of Items whose bare items are Strings,
Tokens, Integers or Booleans, each with Parameters.  Anything else, or any
deviation from the grammar, raises ValueError.  Tests only."""

import re

_INTEGER = re.compile(r"-?\d{1,15}")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")


class _Reader:
    def __init__(self, text):
        self.text, self.i = text, 0

    def peek(self):
        return self.text[self.i] if self.i < len(self.text) else ""

    def take(self, pattern):
        m = pattern.match(self.text, self.i)
        if not m:
            raise ValueError(f"unexpected {self.text[self.i:]!r} in {self.text!r}")
        self.i = m.end()
        return m.group()

    def bare_item(self):
        c = self.peek()
        if c == '"':
            return self.string()
        if c == "?":
            self.i += 1
            value = self.take(re.compile(r"[01]"))
            return value == "1"
        if c == "-" or c.isdigit():
            return int(self.take(_INTEGER))
        if c.isalpha() or c == "*":
            return Token(self.take(_TOKEN))
        raise ValueError(f"no bare item at {self.text[self.i:]!r}")

    def string(self):
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

    def parameters(self):
        params = {}
        while self.peek() == ";":
            self.i += 1
            while self.peek() == " ":
                self.i += 1
            key = self.take(_KEY)
            value = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            params[key] = value
        return params


class Token(str):
    """A Token bare item (kept apart from a String)."""


def parse_list(text):
    """Parse a List field value into [(bare_item, {param: value})]."""
    r = _Reader(text.strip(" "))
    members = []
    while True:
        item = r.bare_item()
        members.append((item, r.parameters()))
        while r.peek() in (" ", "\t"):
            r.i += 1
        if r.peek() == "":
            return members
        if r.peek() != ",":
            raise ValueError(f"expected ',' at {r.text[r.i:]!r}")
        r.i += 1
        while r.peek() in (" ", "\t"):
            r.i += 1
        if r.peek() == "":
            raise ValueError("trailing comma")
