"""The structured-field reader the tests check headers with: the package's
strict RFC 9651 reader (fastlimit.http.sfv)."""

from fastlimit.http.sfv import Token, parse_dictionary, parse_list

__all__ = ["Token", "parse_dictionary", "parse_list"]
