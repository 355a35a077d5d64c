"""The ``fastlimit`` command (:mod:`.main`): the demo (:mod:`.demo`, on real
servers started by :mod:`.servers`), table tools, and a quick benchmark
(:mod:`.quickbench`)."""

from fastlimit.cli.main import main

__all__ = ["main"]
