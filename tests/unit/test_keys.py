# SPDX-License-Identifier: Apache-2.0
"""cache_core.keys: keyed 128-bit fingerprints, batch/single agreement, key-length limits."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core.keys import DEFAULT_MAX_KEY_BYTES, Fingerprinter, KeyLengthError

SECRET = b"0123456789abcdef"
KEYS = [b"a", b"user:42", b"\x00\xff" * 10, b"k" * DEFAULT_MAX_KEY_BYTES, "ключ".encode()]


def test_fingerprint_is_keyed_blake2b_split_little_endian() -> None:
    digest = hashlib.blake2b(b"user:42", digest_size=16, key=SECRET).digest()
    expected = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
    assert Fingerprinter(SECRET).fingerprint(b"user:42") == expected


def test_fixed_secret_gives_deterministic_fingerprints() -> None:
    a, b = Fingerprinter(SECRET), Fingerprinter(SECRET)
    hi_a, lo_a = a.fingerprints(KEYS)
    hi_b, lo_b = b.fingerprints(KEYS)
    assert numpy.array_equal(hi_a, hi_b) and numpy.array_equal(lo_a, lo_b)
    assert a.fingerprint(b"x") == b.fingerprint(b"x")


def test_different_secrets_give_different_fingerprints() -> None:
    one = Fingerprinter(SECRET).fingerprints(KEYS)
    two = Fingerprinter(b"fedcba9876543210").fingerprints(KEYS)
    assert not numpy.any(one[0] == two[0])
    assert not numpy.any(one[1] == two[1])


def test_default_secret_is_shared_in_a_process_and_random_across_processes() -> None:
    mine = Fingerprinter().fingerprint(b"same key")
    assert Fingerprinter(max_key_bytes=16).fingerprint(b"same key") == mine
    assert Fingerprinter(SECRET).fingerprint(b"same key") != mine
    code = "from cache_core.keys import Fingerprinter; print(Fingerprinter().fingerprint(b'same key'))"
    root = Path(__file__).resolve().parents[2]
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=root)
    assert other.stdout.strip() != str(mine)
    assert other.stdout.strip().startswith("(")


def test_batch_equals_single() -> None:
    fp = Fingerprinter(SECRET)
    hi, lo = fp.fingerprints(KEYS)
    assert hi.dtype == numpy.uint64 and lo.dtype == numpy.uint64
    assert hi.shape == lo.shape == (len(KEYS),)
    assert hi.flags.c_contiguous and lo.flags.c_contiguous
    for i, key in enumerate(KEYS):
        assert fp.fingerprint(key) == (int(hi[i]), int(lo[i]))


def test_bytes_like_keys_match_bytes() -> None:
    fp = Fingerprinter(SECRET)
    hi, lo = fp.fingerprints([bytearray(b"abc"), memoryview(b"abc"), b"abc"])  # type: ignore[list-item]
    assert len(set(hi.tolist())) == 1 and len(set(lo.tolist())) == 1


def test_empty_batch() -> None:
    hi, lo = Fingerprinter(SECRET).fingerprints([])
    assert hi.shape == lo.shape == (0,) and hi.dtype == lo.dtype == numpy.uint64


def test_many_keys_have_distinct_fingerprints() -> None:
    hi, lo = Fingerprinter(SECRET).fingerprints([b"key:%d" % i for i in range(50_000)])
    assert numpy.unique(lo).shape[0] == 50_000
    assert numpy.unique(hi).shape[0] == 50_000


def test_key_length_limits() -> None:
    fp = Fingerprinter(SECRET, max_key_bytes=8)
    fp.fingerprint(b"x")
    fp.fingerprint(b"x" * 8)
    fp.fingerprints([b"x", b"y" * 8])
    with pytest.raises(KeyLengthError, match=r"0 bytes; keys must be 1\.\.8 bytes"):
        fp.fingerprint(b"")
    with pytest.raises(KeyLengthError, match=r"9 bytes; keys must be 1\.\.8 bytes"):
        fp.fingerprint(b"x" * 9)
    with pytest.raises(ValueError):
        fp.fingerprint(b"x" * 9)


def test_batch_with_bad_key_names_its_index_and_fails_whole() -> None:
    fp = Fingerprinter(SECRET, max_key_bytes=4)
    with pytest.raises(KeyLengthError, match=r"key at index 2 is 5 bytes") as info:
        fp.fingerprints([b"ok", b"fine", b"toolong"[:5], b""])
    assert "max_key_bytes" in str(info.value)
    with pytest.raises(KeyLengthError, match=r"key at index 1 is 0 bytes"):
        fp.fingerprints([b"ok", b""])


def test_error_never_contains_the_key() -> None:
    fp = Fingerprinter(SECRET, max_key_bytes=4)
    with pytest.raises(KeyLengthError) as info:
        fp.fingerprints([b"secret-token-value"])
    assert "secret-token-value" not in str(info.value)


def test_default_max_key_bytes_is_512() -> None:
    fp = Fingerprinter(SECRET)
    assert fp.max_key_bytes == DEFAULT_MAX_KEY_BYTES == 512
    with pytest.raises(KeyLengthError):
        fp.fingerprint(b"k" * 513)


@pytest.mark.parametrize("secret", [b"", b"x" * 65])
def test_secret_length_is_validated(secret: bytes) -> None:
    with pytest.raises(ValueError, match="secret"):
        Fingerprinter(secret)


def test_max_key_bytes_is_validated() -> None:
    with pytest.raises(ValueError, match="max_key_bytes"):
        Fingerprinter(SECRET, max_key_bytes=0)


@settings(max_examples=300, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    keys=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=40),
    db=st.integers(min_value=0, max_value=65535),
)
def test_compiled_hash_equals_hashlib_blake2b(secret: bytes, keys: list[bytes], db: int) -> None:
    """The compiled BLAKE2b against hashlib's, across block boundaries (127/128/129 bytes
    and several blocks), every key length, secret length and database personalisation."""
    fp = Fingerprinter(secret, max_key_bytes=600)
    person = b"" if db == 0 else b"predis-db" + str(db).encode()
    expected = [hashlib.blake2b(key, digest_size=16, key=secret, person=person).digest() for key in keys]
    hi, lo = fp.fingerprints(keys, db=db)
    for i, digest in enumerate(expected):
        pair = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        assert (int(hi[i]), int(lo[i])) == pair
        assert fp.fingerprint(keys[i], db=db) == pair


@pytest.mark.parametrize("kind", ["baseline", "avx2", "avx512f"])
def test_every_build_of_the_side_by_side_hashing_equals_hashlib(kind: str) -> None:
    """Keys of at most one block are hashed eight at a time (a lane each, on the vector
    unit): each build this CPU runs gives hashlib's digests, across word and block
    boundaries, in batches mixing short and multi-block keys."""
    from cache_core import _native

    chosen = _native.blake2b_lanes()
    try:
        try:
            _native.blake2b_lanes(kind)
        except ValueError:
            pytest.skip(f"this CPU does not run the {kind} build")
        rng = random.Random(kind)
        fp = Fingerprinter(SECRET, max_key_bytes=400)
        lengths = [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 120, 127, 128, 129, 255, 256, 257, 400]
        keys = [rng.randbytes(rng.choice(lengths)) for _ in range(301)]
        hi, lo = fp.fingerprints(keys)
        for i, key in enumerate(keys):
            digest = hashlib.blake2b(key, digest_size=16, key=SECRET).digest()
            assert (int(hi[i]), int(lo[i])) == (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        assert _native.blake2b_lanes() == kind
    finally:
        _native.blake2b_lanes(chosen)
    with pytest.raises(ValueError):
        _native.blake2b_lanes("sse9")


def test_large_batch_hashed_without_the_gil_matches_small_batches() -> None:
    """A batch long enough to be hashed with the GIL released gives what one-key calls give,
    including keys that are bytearrays and memoryviews (read with the GIL held)."""
    fp = Fingerprinter(SECRET)
    keys = [b"key:%d" % i for i in range(3000)]
    hi, lo = fp.fingerprints(keys)
    mixed = [bytearray(k) if i % 3 == 1 else memoryview(k) if i % 3 == 2 else k for i, k in enumerate(keys)]
    hi_m, lo_m = fp.fingerprints(mixed)
    assert numpy.array_equal(hi, hi_m) and numpy.array_equal(lo, lo_m)
    for i in range(0, 3000, 97):
        assert fp.fingerprint(keys[i]) == (int(hi[i]), int(lo[i]))
