# SPDX-License-Identifier: Apache-2.0
"""The compiled core under AddressSanitizer and UndefinedBehaviorSanitizer.

The extension is built again with ``-fsanitize=address,undefined`` into a temporary
directory and tests/fuzz/fuzz_native.py drives it for PREDIS_FUZZ_SECONDS (default 180)
with the sanitizer runtimes preloaded into the interpreter: any out-of-bounds access,
use after free or undefined behaviour aborts the fuzzer with the sanitizer's report, and
every parse is compared with the Python oracle. Leak detection is off in the sanitizer (the
interpreter itself does not free everything at exit); leaks are checked by
test_native_parser.py's tracemalloc test, which sees every buffer and object the module
allocates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = float(os.environ.get("PREDIS_FUZZ_SECONDS", "180"))


def runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"gcc has no {name}: install gcc's sanitizer runtimes (libasan, libubsan)")
    return path


@pytest.mark.timeout(FUZZ_SECONDS + 420)  # the build (up to 300 s on a loaded machine) and the fuzzing
def test_fuzzing_the_sanitized_core_finds_nothing(tmp_path: Path) -> None:
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g"
    env = {**os.environ, "CFLAGS": flags, "LDFLAGS": "-fsanitize=address,undefined"}
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    built = list((tmp_path / "lib" / "cache_core").glob("_native*.so"))
    assert len(built) == 1, built
    nm = subprocess.run(["nm", "-D", str(built[0])], capture_output=True, text=True, check=True).stdout
    assert "__asan_report" in nm and "__ubsan_handle" in nm, "the build is not instrumented"
    env = {
        **os.environ,
        "LD_PRELOAD": f"{runtime('libasan.so')}:{runtime('libubsan.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    fuzz = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_native", str(FUZZ_SECONDS), str(built[0])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120,
    )
    assert fuzz.returncode == 0, fuzz.stdout[-2000:] + fuzz.stderr[-8000:]
    assert str(built[0]) in fuzz.stdout and "no finding" in fuzz.stdout, fuzz.stdout
