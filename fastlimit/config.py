"""The policy file's schema and loader, at the path the README names (it
lives in :mod:`fastlimit.policy.config`, whose docstring is the schema)."""

from fastlimit.policy.config import load_dict, load_file
from fastlimit.policy.config import tomllib as tomllib

__all__ = ["load_dict", "load_file", "tomllib"]
