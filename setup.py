# SPDX-License-Identifier: Apache-2.0
"""Build of the compiled serving core (cache_core._native); all metadata is in setup.cfg.

Needs a C11 compiler and the Python headers (gcc and python3-dev on Debian)."""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cache_core._native",
            sources=sorted(glob("cache_core/native/*.c")),
            depends=sorted(glob("cache_core/native/*.h")),
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing"],
        )
    ]
)
