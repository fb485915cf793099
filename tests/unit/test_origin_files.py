# SPDX-License-Identifier: Apache-2.0
"""plugins.origins.files: loading, refusals, size cap, errors, counters, schema and read-through.

Hermetic: every tree is built under ``tmp_path``. Reads and opens are observed by
wrapping ``os.open``/``os.read`` (the plugin goes through the ``os`` module), which is
how "refused without reading" is asserted rather than assumed.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy
import pytest

from agent.config import build_schema, fill_defaults, load_config
from agent.errors import ConfigError
from agent.plugins import DEFAULT_PLUGINS, PluginHost
from cache_core.cache import Cache
from plugins.origins import files
from plugins.origins.files import FilesOrigin, parse_key

COUNTERS = ("loads", "misses", "rejected", "oversized", "errors")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "dir" / "sub").mkdir(parents=True)
    (base / "a").write_bytes(b"alpha")
    (base / "b").write_bytes(b"bravo")
    (base / "empty").write_bytes(b"")
    (base / "dir" / "sub" / "deep").write_bytes(b"deep value")
    (base / "unicode-é").write_bytes(b"accent")
    return base


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(b"must never be read")
    return secret


@pytest.fixture
def io_spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Record every os.open (path, dir_fd) and os.read (fd) while the test runs."""
    calls: dict[str, list[Any]] = {"open": [], "read": []}
    real_open: Callable[..., int] = os.open
    real_read: Callable[[int, int], bytes] = os.read

    def spy_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        calls["open"].append((os.fspath(path), dir_fd))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def spy_read(fd: int, n: int) -> bytes:
        calls["read"].append(fd)
        return real_read(fd, n)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "read", spy_read)
    return calls


def counters(origin: FilesOrigin) -> dict[str, int]:
    return {name: getattr(origin, name) for name in COUNTERS}


# ----------------------------------------------------------------------------- loading


def test_loads_present_files_and_misses_absent_ones(root: Path) -> None:
    origin = FilesOrigin(root)
    keys = [b"a", b"dir/sub/deep", b"absent", b"dir/absent", "unicode-é".encode(), b"empty"]
    assert origin.load_many(keys) == [b"alpha", b"deep value", None, None, b"accent", b""]
    assert counters(origin) == {"loads": 4, "misses": 2, "rejected": 0, "oversized": 0, "errors": 0}
    assert origin.bytes == len(b"alpha") + len(b"deep value") + len(b"accent")
    assert origin.name == "files"


def test_preserves_order_and_duplicates_and_reads_each_file_once(root: Path, io_spy: dict[str, list[Any]]) -> None:
    origin = FilesOrigin(root)
    keys = [b"b", b"a", b"absent", b"a", b"b", b"absent"]
    assert origin.load_many(keys) == [b"bravo", b"alpha", None, b"alpha", b"bravo", None]
    opened = [path for path, dir_fd in io_spy["open"] if dir_fd is not None]
    assert sorted(opened) == ["a", "absent", "b"]
    assert counters(origin)["loads"] == 4 and counters(origin)["misses"] == 2
    assert origin.bytes == 2 * (len(b"alpha") + len(b"bravo"))


def test_empty_batch_touches_nothing(root: Path, io_spy: dict[str, list[Any]]) -> None:
    origin = FilesOrigin(root)
    assert origin.load_many([]) == []
    assert io_spy["open"] == [] and counters(origin) == dict.fromkeys(COUNTERS, 0)


def test_origin_sees_changes_on_disk_between_batches(root: Path) -> None:
    origin = FilesOrigin(root)
    assert origin.load_many([b"later"]) == [None]
    (root / "later").write_bytes(b"now here")
    assert origin.load_many([b"later"]) == [b"now here"]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "key",
    [
        b"../outside/secret",
        b"a/../../outside/secret",
        b"dir/../a",
        b"..",
        b"/etc/passwd",
        b"/",
        b"a\x00b",
        b"\xff\xfe",
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # an encoded surrogate
        b"dir\\sub\\deep",
        b"..\\outside\\secret",
        b"",
        b"dir//sub/deep",
        b"./a",
        b"dir/sub/",
    ],
)
def test_refuses_bad_keys_without_opening_anything_under_root(
    root: Path, outside: Path, io_spy: dict[str, list[Any]], key: bytes
) -> None:
    origin = FilesOrigin(root)
    assert origin.load_many([key]) == [None]
    assert io_spy["open"] == [(str(root), None)]  # only the root descriptor itself
    assert io_spy["read"] == []
    assert counters(origin) == {"loads": 0, "misses": 0, "rejected": 1, "oversized": 0, "errors": 0}


def test_non_bytes_keys_are_refused(root: Path) -> None:
    origin = FilesOrigin(root)
    assert origin.load_many(["a", 7, None]) == [None, None, None]  # type: ignore[list-item]
    assert origin.rejected == 3


def test_bytes_like_keys_are_accepted(root: Path) -> None:
    origin = FilesOrigin(root)
    assert origin.load_many([bytearray(b"a"), memoryview(b"b")]) == [b"alpha", b"bravo"]  # type: ignore[list-item]


@pytest.mark.parametrize("follow", [False, True])
def test_symlink_pointing_outside_root_is_refused_in_both_modes(
    root: Path, outside: Path, io_spy: dict[str, list[Any]], follow: bool
) -> None:
    (root / "escape").symlink_to(outside)
    (root / "escdir").symlink_to(outside.parent, target_is_directory=True)
    origin = FilesOrigin(root, follow_symlinks=follow)
    assert origin.load_many([b"escape", b"escdir/secret"]) == [None, None]
    assert io_spy["read"] == []
    assert origin.rejected == 2 and origin.loads == 0


def test_symlinks_inside_root_are_followed_only_when_enabled(root: Path) -> None:
    (root / "link").symlink_to("a")
    (root / "dirlink").symlink_to("dir", target_is_directory=True)
    keys = [b"link", b"dirlink/sub/deep"]
    strict = FilesOrigin(root)
    assert strict.load_many(keys) == [None, None]
    assert strict.rejected == 2
    following = FilesOrigin(root, follow_symlinks=True)
    assert following.load_many(keys) == [b"alpha", b"deep value"]
    assert following.loads == 2 and following.rejected == 0


def test_symlink_loop_is_refused_when_following(root: Path) -> None:
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    origin = FilesOrigin(root, follow_symlinks=True)
    assert origin.load_many([b"loop1"]) == [None]
    assert origin.rejected == 1


def test_symlinked_root_is_resolved_once(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    origin = FilesOrigin(alias)
    assert origin.root == root.resolve()
    assert origin.load_many([b"a"]) == [b"alpha"]


# ----------------------------------------------------------------------------- not values


def test_directories_special_files_and_paths_through_files_are_misses(root: Path) -> None:
    os.mkfifo(root / "fifo")  # opened non-blocking: a FIFO must not hang the batch
    origin = FilesOrigin(root)
    assert origin.load_many([b"dir", b"dir/sub", b"fifo", b"a/below-a-file"]) == [None] * 4
    assert counters(origin) == {"loads": 0, "misses": 4, "rejected": 0, "oversized": 0, "errors": 0}


def test_size_cap_refuses_larger_files_and_logs_once_per_key(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "exact").write_bytes(b"x" * 16)
    (root / "big").write_bytes(b"x" * 17)
    origin = FilesOrigin(root, max_file_bytes=16)
    caplog.set_level(logging.WARNING, logger=files.__name__)
    assert origin.load_many([b"exact", b"big", b"big"]) == [b"x" * 16, None, None]
    assert origin.load_many([b"big"]) == [None]
    assert origin.oversized == 3 and origin.loads == 1 and origin.bytes == 16
    warnings = [r.getMessage() for r in caplog.records if r.name == files.__name__]
    assert len(warnings) == 1
    assert "b'big'" in warnings[0] and str(root) not in warnings[0]


def test_file_that_grows_past_the_cap_after_fstat_is_not_loaded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "growing").write_bytes(b"y" * 100)
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        fields = list(st)
        fields[6] = 1  # st_size as it was when the file was still small
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", small_fstat)
    origin = FilesOrigin(root, max_file_bytes=10)
    assert origin.load_many([b"growing", b"a"]) == [None, b"alpha"]
    assert origin.oversized == 1 and origin.loads == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_an_error_and_costs_only_its_key(root: Path) -> None:
    locked = root / "locked"
    locked.write_bytes(b"no")
    locked.chmod(0)
    try:
        origin = FilesOrigin(root)
        assert origin.load_many([b"locked", b"a"]) == [None, b"alpha"]
        assert origin.errors == 1 and origin.loads == 1
    finally:
        locked.chmod(0o600)


def test_permission_denied_at_open_is_an_error_even_when_running_as_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The chmod test above cannot run as root, so EACCES is injected at the open itself.
    (root / "locked").write_bytes(b"no")
    real_open = os.open

    def denying_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and os.fspath(path) == "locked":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denying_open)
    origin = FilesOrigin(root)
    assert origin.load_many([b"locked", b"a", b"locked"]) == [None, b"alpha", None]
    assert counters(origin) == {"loads": 1, "misses": 0, "rejected": 0, "oversized": 0, "errors": 2}


def test_read_error_is_counted_and_costs_only_its_key(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bad_inode = (root / "b").stat().st_ino
    real_read = os.read

    def failing_read(fd: int, n: int) -> bytes:
        if os.fstat(fd).st_ino == bad_inode:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", failing_read)
    caplog.set_level(logging.WARNING, logger=files.__name__)
    origin = FilesOrigin(root)
    assert origin.load_many([b"a", b"b", b"dir/sub/deep"]) == [b"alpha", None, b"deep value"]
    assert counters(origin) == {"loads": 2, "misses": 0, "rejected": 0, "oversized": 0, "errors": 1}
    message = caplog.records[-1].getMessage()
    assert "EIO" in message and "b'b'" in message and str(root) not in message


def test_missing_root_counts_errors_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = tmp_path / "not-mounted"
    origin = FilesOrigin(gone)
    caplog.set_level(logging.WARNING, logger=files.__name__)
    assert origin.load_many([b"a", b"b"]) == [None, None]
    assert origin.load_many([b"a"]) == [None]
    assert origin.errors == 3
    assert len([r for r in caplog.records if r.name == files.__name__]) == 1
    gone.mkdir()
    (gone / "a").write_bytes(b"back")
    assert origin.load_many([b"a"]) == [b"back"]


def test_counters_add_up_to_the_keys_asked_for(root: Path, outside: Path) -> None:
    (root / "big").write_bytes(b"z" * 9)
    (root / "escape").symlink_to(outside)
    origin = FilesOrigin(root, max_file_bytes=8)
    keys = [b"a", b"absent", b"../x", b"escape", b"big", b"dir", b"a"]
    origin.load_many(keys)
    stats = origin.stats()
    assert stats == {"loads": 2, "misses": 2, "rejected": 2, "oversized": 1, "errors": 0, "bytes": 10}
    assert sum(stats[name] for name in COUNTERS) == len(keys)


def test_parse_key_components() -> None:
    assert parse_key(b"a") == ("a",)
    assert parse_key(b"dir/sub/deep") == ("dir", "sub", "deep")
    assert parse_key(b"..hidden/x..") == ("..hidden", "x..")
    assert parse_key(b"a/../b") is None and parse_key(b"/a") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"root": ""},
        {"root": "relative/dir"},
        {"root": "/srv/\x00"},
        {"root": "/srv", "max_file_bytes": 0},
        {"root": "/srv", "max_file_bytes": (1 << 30) + 1},
    ],
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="plugins.files"):
        FilesOrigin(**kwargs)


# ----------------------------------------------------------------------------- schema and hooks


def test_schema_fragment_is_valid_and_every_number_has_default_and_range() -> None:
    fragment = files.predis_agent_config_schema()
    jsonschema.Draft202012Validator.check_schema(fragment)
    assert fragment["additionalProperties"] is False
    assert "enabled" not in fragment["properties"]  # the host adds it
    for name, prop in fragment["properties"].items():
        assert "default" in prop and prop.get("description"), name
        if prop.get("type") == "integer":
            assert "minimum" in prop and "maximum" in prop, name
        jsonschema.Draft202012Validator(prop).validate(prop["default"])
    section: dict[str, Any] = {}
    fill_defaults(section, fragment)
    assert section == {"root": "", "max_file_bytes": 1048576, "follow_symlinks": False}


def test_files_is_a_builtin_and_its_section_is_validated() -> None:
    assert ("files", "plugins.origins.files") in DEFAULT_PLUGINS
    host = PluginHost(load_entrypoints=False)
    assert host.plugins["files"].state == "loaded"
    fragments, opaque = host.schema_fragments()
    assert "files" in fragments and "files" not in opaque
    jsonschema.Draft202012Validator.check_schema(build_schema(fragments, opaque))
    cfg = load_config(None, text="plugins:\n  files:\n    root: /srv/values\n", plugin_fragments=fragments)
    expected = {"root": "/srv/values", "max_file_bytes": 1048576, "follow_symlinks": False, "enabled": True}
    assert cfg.plugin_config("files") == expected
    default = load_config(None, plugin_fragments=fragments)
    assert default.plugin_config("files")["root"] == ""


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("plugins:\n  files:\n    root: relative/dir\n", "plugins.files.root"),
        ("plugins:\n  files:\n    max_file_bytes: 0\n", "plugins.files.max_file_bytes"),
        ("plugins:\n  files:\n    max_file_bytes: 1073741825\n", "plugins.files.max_file_bytes"),
        ("plugins:\n  files:\n    follow_symlink: true\n", "plugins.files.follow_symlink"),
    ],
)
def test_bad_files_sections_are_config_errors_naming_the_key(text: str, path: str) -> None:
    fragments, opaque = PluginHost(load_entrypoints=False).schema_fragments()
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    assert [p.path for p in info.value.problems] == [path]


def _registered_origins(text: str) -> list[Any]:
    host = PluginHost(load_entrypoints=False, builtins=(("files", "plugins.origins.files"),))
    fragments, opaque = host.schema_fragments()
    cfg = load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    host.apply_config(cfg.plugin_enabled)
    return [origin for _plugin, origin in host.collect("predis_agent_register_origins", agent=object(), config=cfg)]


def test_register_hook_returns_no_origin_while_root_is_empty() -> None:
    assert _registered_origins("") == []
    assert _registered_origins("plugins:\n  files:\n    root: /srv/x\n    enabled: false\n") == []


def test_register_hook_builds_the_origin_from_its_section(root: Path) -> None:
    text = f"plugins:\n  files:\n    root: {root}\n    max_file_bytes: 4\n    follow_symlinks: true\n"
    (origin,) = _registered_origins(text)
    assert isinstance(origin, FilesOrigin)
    assert (origin.root, origin.max_file_bytes, origin.follow_symlinks) == (root.resolve(), 4, True)
    assert origin.load_many([b"a", b"empty"]) == [None, b""]  # "alpha" is over the 4-byte cap


# ----------------------------------------------------------------------------- read-through


def test_cache_reads_through_the_files_origin_then_hits(root: Path) -> None:
    origin = FilesOrigin(root)
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=origin, read_through=True)
    assert cache.get(b"a") == b"alpha"
    first = cache.snapshot()
    assert (first.hits, first.misses, first.origin_loads) == (0, 1, 1)
    assert cache.get(b"a") == b"alpha"
    second = cache.snapshot()
    assert (second.hits, second.misses, second.origin_loads) == (1, 1, 1)
    assert origin.loads == 1  # the hit never reached the origin
    assert cache.mget([b"../outside/secret", b"dir/sub/deep", b"absent"]) == [None, b"deep value", None]
    third = cache.snapshot()
    assert (third.misses, third.origin_loads, third.origin_errors) == (4, 2, 0)
    assert (origin.rejected, origin.misses) == (1, 1)
