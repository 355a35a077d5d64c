"""Build the compiled parts: the core (fastlimit/_core.pyx and its parts in
fastlimit/core/) and the per-request paths above it.  ``FASTLIMIT_DEBUG=1``
builds them with -O0 -g and Cython's bounds checks, for gdb and sanitizers.
The extensions compile side by side, one per CPU (``FASTLIMIT_BUILD_JOBS=N``
to choose): the largest C files take most of a minute each at -O3."""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTLIMIT_DEBUG") == "1"
compile_args = ["-O0", "-g"] if debug else ["-O3"]
directives = {"boundscheck": True, "wraparound": True} if debug else {}

jobs = int(os.environ.get("FASTLIMIT_BUILD_JOBS") or os.cpu_count() or 1)

print(f"fastlimit: building the {'debug' if debug else 'release'} core ({' '.join(compile_args)})")

extensions = [
    Extension(
        "fastlimit._core",
        ["fastlimit/_core.pyx"],
        include_dirs=["fastlimit/core", numpy.get_include()],
        depends=glob.glob("fastlimit/core/*.h") + glob.glob("fastlimit/core/*.pxi")
        + ["fastlimit/_core.pxd"],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    *(Extension(name, [name.replace(".", "/") + ".pyx"],
                depends=["fastlimit/_core.pxd", "fastlimit/http/_addr.pxd"],
                extra_compile_args=compile_args)
      for name in ("fastlimit.http._fields", "fastlimit.limiters._counting",
                   "fastlimit.policy._plan", "fastlimit.http._addr", "fastlimit.web._serve",
                   "fastlimit.stores._fleet")),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, language_level=3),
      options={"build_ext": {"parallel": jobs}})
