"""Build the compiled core and the middlewares' compiled request check.  ``FASTLIMIT_DEBUG=1`` builds it with -O0 -g and
Cython's bounds checks, for gdb and sanitizers."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTLIMIT_DEBUG") == "1"
compile_args = ["-O0", "-g"] if debug else ["-O3"]
directives = {"boundscheck": True, "wraparound": True} if debug else {}

print(f"fastlimit: building the {'debug' if debug else 'release'} core ({' '.join(compile_args)})")

extensions = [
    Extension(
        "fastlimit._core",
        ["fastlimit/_core.pyx"],
        include_dirs=["fastlimit", numpy.get_include()],
        depends=["fastlimit/_atomic.h", "fastlimit/_siphash.h", "fastlimit/_proc.h"],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension("fastlimit._lane", ["fastlimit/_lane.pyx"], depends=["fastlimit/_core.pxd"],
              extra_compile_args=compile_args),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, language_level=3))
