# SPDX-License-Identifier: Apache-2.0
"""Path traversal against the ``files`` origin (requirement S-05).

Every key comes from the network. Whatever a key says, and however the tree under the
root is rearranged while a batch runs, no byte of a file outside the root may come back.
Each test plants a secret just outside the root, next to a sibling directory whose name
shares the root's prefix (the classic ``startswith`` confinement bug), and checks both
symlink modes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import pytest

from cache_core.cache import Cache
from plugins.origins import files
from plugins.origins.files import FilesOrigin

SECRET = b"TOP-SECRET-outside-the-root"

TRAVERSALS = [
    b"../secret",
    b"../root-evil/secret",
    b"../../secret",
    b"a/../../secret",
    b"dir/../../secret",
    b"dir/sub/../../../secret",
    b"..",
    b"../",
    b"./../secret",
    b"/etc/passwd",
    b"//etc/passwd",
    b"/" + b"x" * 10,
    b"..\\secret",
    b"dir\\..\\..\\secret",
    b"C:\\secret",
    b"secret\x00",
    b"\x00../secret",
    b"a\x00/../../secret",
    b"\xc0\xae\xc0\xae/secret",  # overlong "..": must not decode to ".."
    b"\xe0\x80\xae\xe0\x80\xae/secret",
    b"\xff../secret",
    b"dir/\xed\xb3\xbf",  # a lone surrogate, as os.fsencode would produce
]
HARMLESS_LOOKALIKES = [b"%2e%2e/secret", b"..%2fsecret", b"...", b"dir/..hidden", b"\xe2\x80\xa4\xe2\x80\xa4/secret"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"alpha")
    (root / "dir" / "sub" / "deep").write_bytes(b"deep value")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "secret").write_bytes(SECRET)
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Inodes of every file the process reads while the test runs."""
    seen: list[int] = []
    real_read: Callable[[int, int], bytes] = os.read

    def spy(fd: int, n: int) -> bytes:
        seen.append(os.fstat(fd).st_ino)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", spy)
    return seen


@pytest.mark.parametrize("follow", [False, True], ids=["nofollow", "follow"])
def test_traversal_keys_are_refused_and_nothing_is_read(tree: Path, reads: list[int], follow: bool) -> None:
    origin = FilesOrigin(tree, follow_symlinks=follow)
    assert origin.load_many(TRAVERSALS) == [None] * len(TRAVERSALS)
    assert reads == []
    assert origin.rejected == len(TRAVERSALS) and origin.loads == origin.misses == origin.errors == 0


@pytest.mark.parametrize("follow", [False, True], ids=["nofollow", "follow"])
def test_encoded_lookalikes_are_plain_names_inside_the_root(tree: Path, follow: bool) -> None:
    origin = FilesOrigin(tree, follow_symlinks=follow)
    assert origin.load_many(HARMLESS_LOOKALIKES) == [None] * len(HARMLESS_LOOKALIKES)
    assert origin.misses == len(HARMLESS_LOOKALIKES)  # looked up under the root, found nothing
    (tree / "%2e%2e").mkdir()
    (tree / "%2e%2e" / "secret").write_bytes(b"inside after all")
    assert origin.load_many([b"%2e%2e/secret"]) == [b"inside after all"]


@pytest.mark.parametrize("follow", [False, True], ids=["nofollow", "follow"])
def test_symlinks_that_leave_the_root_are_refused(tree: Path, reads: list[int], follow: bool) -> None:
    outside = tree.parent
    (tree / "abs").symlink_to(outside / "secret")
    (tree / "rel").symlink_to("../secret")
    (tree / "evil").symlink_to("../root-evil", target_is_directory=True)
    (tree / "dir" / "hop").symlink_to("../chain")
    (tree / "chain").symlink_to("../secret")
    (tree / "etc").symlink_to("/etc", target_is_directory=True)
    keys = [b"abs", b"rel", b"evil/secret", b"dir/hop", b"chain", b"etc/passwd"]
    origin = FilesOrigin(tree, follow_symlinks=follow)
    values = origin.load_many(keys)
    assert values == [None] * len(keys)
    assert reads == []
    assert origin.rejected == len(keys)


def test_symlinks_resolving_inside_the_root_work_only_when_following(tree: Path) -> None:
    (tree / "abs-inside").symlink_to(tree / "a")
    (tree / "dir" / "up").symlink_to("../a")  # ".." inside a link target is fine if it stays in
    keys = [b"abs-inside", b"dir/up"]
    assert FilesOrigin(tree, follow_symlinks=True).load_many(keys) == [b"alpha", b"alpha"]
    assert FilesOrigin(tree, follow_symlinks=False).load_many(keys) == [None, None]


def test_directory_swapped_for_an_outside_symlink_after_resolution_is_refused(
    tree: Path, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race that a resolve-then-open-by-path design loses: confine() approves
    # dir/sub/deep, then an attacker replaces dir/sub with a link to a copy outside.
    decoy = tree.parent / "decoy"
    decoy.mkdir()
    (decoy / "deep").write_bytes(SECRET)
    real_confine = files.confine

    def racing_confine(root: Any, candidate: Any) -> Path:
        resolved = real_confine(root, candidate)
        shutil.rmtree(tree / "dir" / "sub")
        (tree / "dir" / "sub").symlink_to(decoy, target_is_directory=True)
        return resolved

    monkeypatch.setattr(files, "confine", racing_confine)
    origin = FilesOrigin(tree, follow_symlinks=True)
    assert origin.load_many([b"dir/sub/deep"]) == [None]
    assert reads == []
    assert origin.rejected == 1


def test_file_swapped_for_an_outside_symlink_after_resolution_is_refused(
    tree: Path, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_confine = files.confine

    def racing_confine(root: Any, candidate: Any) -> Path:
        resolved = real_confine(root, candidate)
        (tree / "a").unlink()
        (tree / "a").symlink_to(tree.parent / "secret")
        return resolved

    monkeypatch.setattr(files, "confine", racing_confine)
    origin = FilesOrigin(tree, follow_symlinks=True)
    assert origin.load_many([b"a"]) == [None]
    assert reads == [] and origin.rejected == 1


@pytest.mark.parametrize("follow", [False, True], ids=["nofollow", "follow"])
def test_read_through_cache_never_serves_or_stores_outside_bytes(tree: Path, follow: bool) -> None:
    (tree / "rel").symlink_to("../secret")
    origin = FilesOrigin(tree, follow_symlinks=follow)
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=origin, read_through=True)
    keys = [*TRAVERSALS, b"rel"]
    values = cache.mget(keys)
    assert values == [None] * len(keys)
    assert cache.snapshot().origin_loads == 0 and cache.snapshot().keys == 0
    assert cache.get(b"a") == b"alpha"  # a good key in the same cache still loads
