# SPDX-License-Identifier: Apache-2.0
"""cache_core/kernels/table.cu: compiles with nvcc (when present) and agrees with table.py.

Without a GPU the CUDA path of the table cannot run here, so these checks catch what can
be caught statically: syntax and type errors (nvcc to PTX needs no GPU), kernel names
that table.py asks for but the source lacks, and constants that drifted apart.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy
import pytest

import cache_core.table as table_module
from cache_core.table import ACTION_ADVANCE, ACTION_CREATED, ACTION_FOUND, EMPTY, FULL, KERNEL_NAMES, TOMBSTONE, HashTable, kernel_source

SOURCE = Path(table_module.__file__).parent / "kernels" / "table.cu"
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not on PATH, so table.cu cannot be compiled here")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_table_kernels_compile_to_ptx(arch: str, tmp_path: Path) -> None:
    assert NVCC is not None
    ptx = tmp_path / "table.ptx"
    result = subprocess.run(
        [NVCC, "--ptx", f"-arch={arch}", "-o", str(ptx), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    text = ptx.read_text()
    for name in KERNEL_NAMES:
        assert re.search(rf"\.entry {name}\(", text), f"{name} missing from PTX (is it extern \"C\"?)"


def test_every_kernel_table_py_uses_is_defined_in_the_source() -> None:
    source = SOURCE.read_text()
    used = set(re.findall(r'"(predis_\w+)"', Path(table_module.__file__).read_text()))
    assert used, "table.py names no kernels"
    assert used <= set(KERNEL_NAMES)
    for name in KERNEL_NAMES:
        assert re.search(rf'extern "C" __global__ void {name}\(', source), name


def test_kernel_source_is_loaded_from_the_package() -> None:
    assert kernel_source() == SOURCE.read_text()


def test_constants_agree_between_cuda_and_python() -> None:
    defines = dict(re.findall(r"#define PREDIS_(\w+) (\d+)", SOURCE.read_text()))
    expected = {
        "EMPTY": table_module.EMPTY,
        "FULL": table_module.FULL,
        "TOMBSTONE": table_module.TOMBSTONE,
        "FOUND": table_module.ACTION_FOUND,
        "CREATED": table_module.ACTION_CREATED,
        "ADVANCE": table_module.ACTION_ADVANCE,
    }
    for name, value in expected.items():
        assert int(defines[name]) == value, name


# ---------------------------------------------------------------------------- CUDA call sites
_POINTER_DTYPES = {"u64": {"uint64"}, "unsigned char": {"uint8", "bool"}, "long long": {"int64"}, "int": {"int32"}}
_SCALAR_TYPES = {"u64": numpy.uint64, "long long": numpy.int64, "int": numpy.int32}


def kernel_signatures() -> dict[str, list[tuple[str, bool, str]]]:
    """``name -> [(base type, is pointer, parameter name)]`` parsed from table.cu."""
    found = {}
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', SOURCE.read_text(), re.S):
        parsed = []
        for param in params.split(","):
            words = param.replace("__restrict__", " ").replace("const", " ").split()
            pointer = "*" in param
            base = " ".join(w for w in words[:-1] if w != "*").replace("*", "").strip()
            parsed.append((base, pointer, words[-1].lstrip("*")))
        found[name] = parsed
    return found


class FakeKernel:
    """Stands in for ``cupy.RawKernel``: checks each call against the .cu signature, then
    runs a per-thread Python transcription of the kernel on the NumPy arrays."""

    def __init__(self, name: str, signature: list[tuple[str, bool, str]], body: Any) -> None:
        self.name, self.signature, self.body = name, signature, body
        self.calls = 0

    def __call__(self, grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
        assert len(args) == len(self.signature), f"{self.name}: {len(args)} args for {len(self.signature)} parameters"
        for arg, (base, pointer, pname) in zip(args, self.signature):
            if pointer:
                assert isinstance(arg, numpy.ndarray) and arg.flags.c_contiguous, f"{self.name}.{pname}"
                assert arg.dtype.name in _POINTER_DTYPES[base], f"{self.name}.{pname}: {arg.dtype} for {base}*"
            else:
                assert type(arg) is _SCALAR_TYPES[base], f"{self.name}.{pname}: {type(arg).__name__} for {base}"
        self.calls += 1
        self.body(*args)


def _lookup(keys: Any, state: Any, mask: Any, max_probes: Any, query: Any, n: Any, out: Any, first_free: Any, track: Any) -> None:
    for i in range(int(n)):
        q = (int(query[i, 0]), int(query[i, 1]))
        pos, found, free = q[1] & int(mask), -1, -1
        for _ in range(int(max_probes)):
            st = int(state[pos])
            if st == FULL:
                if (int(keys[pos, 0]), int(keys[pos, 1])) == q:
                    found = pos
                    break
            else:
                free = pos if free < 0 else free
                if st == EMPTY:
                    break
            pos = (pos + 1) & int(mask)
        out[i] = found
        if track:
            first_free[i] = free


def _insert(keys: Any, state: Any, claim: Any, mask: Any, query: Any, idx: Any, pos: Any, m: Any, top: Any,
            phase: Any, action: Any, seen: Any, slots: Any, created: Any) -> None:
    for j in range(int(m)):
        i, p = int(idx[j]), int(pos[j])
        ticket = int(top) - i
        if phase == 0:
            seen[j] = st = state[p]
            if st == FULL:
                if (keys[p] == query[i]).all():
                    slots[i], action[j] = p, ACTION_FOUND
                else:
                    pos[j], action[j] = (p + 1) & int(mask), ACTION_ADVANCE
            else:
                claim[p] = max(int(claim[p]), ticket)
                action[j] = 4
        elif action[j] == 4:
            best = int(claim[p])
            if best == ticket:
                keys[p] = query[i]
                state[p], slots[i], created[i], action[j] = FULL, p, 1, ACTION_CREATED
            elif (query[int(top) - best] == query[i]).all():
                slots[i], action[j] = p, ACTION_FOUND
            else:
                pos[j], action[j] = (p + 1) & int(mask), ACTION_ADVANCE


def _delete(keys: Any, state: Any, handle: Any, slots: Any, n: Any) -> None:
    for p in slots[: int(n)].tolist():
        keys[p], handle[p], state[p] = 0, -1, TOMBSTONE


def _claim(claim: Any, slots: Any, tickets: Any, n: Any) -> None:
    for j in range(int(n)):
        claim[slots[j]] = max(int(claim[slots[j]]), int(tickets[j]))


def test_cuda_call_sites_match_the_kernels_and_give_the_numpy_results() -> None:
    """Drive table.py's CuPy branch (with NumPy arrays and fake kernels) against the NumPy branch."""
    signatures = kernel_signatures()
    assert set(signatures) == set(KERNEL_NAMES)
    bodies = {"predis_lookup": _lookup, "predis_insert": _insert, "predis_delete": _delete, "predis_claim": _claim}
    fakes = {name: FakeKernel(name, signatures[name], bodies[name]) for name in KERNEL_NAMES}
    assert [p[2] for p in signatures["predis_insert"]][-4:] == ["action", "seen", "slots", "created"]

    plain = HashTable(numpy, 64, max_load_factor=1.0)  # the compiled table (native/table.c)
    gpu = HashTable(numpy, 64, max_load_factor=1.0, native=False)
    gpu._kernels = fakes
    gpu._keys16 = None
    rng = numpy.random.default_rng(4)
    for step in range(10):
        hi = rng.integers(0, 3, size=24).astype(numpy.uint64)
        lo = rng.integers(0, 20, size=24).astype(numpy.uint64)
        for table in (plain, gpu):
            table.delete(hi[::4], lo[::4])
        if len(plain) + 24 <= 64:
            a, b = plain.insert(hi, lo), gpu.insert(hi, lo)
            assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
            handles = numpy.arange(24) + 100 * step
            plain.set_handles(a[0], handles)
            gpu.set_handles(b[0], handles)
        assert plain.lookup(hi, lo).tolist() == gpu.lookup(hi, lo).tolist()
        for name in ("hi", "lo", "state", "handle"):
            assert getattr(plain, name).tolist() == getattr(gpu, name).tolist(), name
        assert (len(plain), plain.tombstones) == (len(gpu), gpu.tombstones)
    assert gpu.self_test_probe(8)[0]
    mapping_plain, mapping_gpu = plain.rehash(128), gpu.rehash(128)
    assert mapping_plain.tolist() == mapping_gpu.tolist()
    assert gpu.state.tolist() == plain.state.tolist()
    assert all(fake.calls for fake in fakes.values())
