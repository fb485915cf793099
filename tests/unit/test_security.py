# SPDX-License-Identifier: Apache-2.0
"""agent.security: the hashed token store, atomic writes, path confinement, tenant IDs."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from agent.errors import AuthError, SecurityError
from agent.security import MAX_TOKEN_STORE_BYTES, TOKEN_RE, TokenStore, atomic_write, confine, hash_token, validate_tenant_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def near_misses(token: str) -> list[str]:
    """The token with one character changed: first, in the ID, in the middle, last."""
    out = []
    for index in (0, 5, len(token) // 2, len(token) - 1):
        replacement = "b" if token[index] != "b" else "c"
        out.append(token[:index] + replacement + token[index + 1 :])
    return out


# ----------------------------------------------------------------------------- token store


def test_created_token_has_the_documented_shape_and_256_bit_secret(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("ci")
    match = TOKEN_RE.fullmatch(token)
    assert match is not None
    assert match.group(1) == record.id
    secret_part = match.group(2)
    raw = base64.urlsafe_b64decode(secret_part + "=")
    assert len(raw) * 8 == 256
    assert record.name == "ci" and record.digest == hash_token(token)
    other, _ = store.create("ci")
    assert other != token and TOKEN_RE.fullmatch(other).group(2) != secret_part  # type: ignore[union-attr]


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token, record = store.create("ops")
    data = path.read_bytes()
    secret_part = token.rsplit("_", 1)[1]
    assert token.encode() not in data
    assert secret_part.encode() not in data
    assert secret_part[:16].encode() not in data
    body = json.loads(data)
    assert body["version"] == 1
    assert body["tokens"] == [{"id": record.id, "name": "ops", "created": record.created, "scope": "admin", "digest": hash_token(token)}]


def test_scopes_include_the_ones_before_and_old_tokens_keep_full_access(tmp_path: Path) -> None:
    from agent.security import scope_allows

    assert [scope_allows("metrics", n) for n in ("metrics", "read", "admin")] == [True, False, False]
    assert [scope_allows("read", n) for n in ("metrics", "read", "admin")] == [True, True, False]
    assert [scope_allows("admin", n) for n in ("metrics", "read", "admin")] == [True, True, True]
    assert not scope_allows("root", "metrics") and not scope_allows("admin", "root")
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    metrics_token, record = store.create("scraper", "metrics")
    assert store.verify(metrics_token).scope == "metrics" and record.scope == "metrics"
    with pytest.raises(SecurityError, match="unknown token scope 'root'"):
        store.create("x", "root")
    # A store written before scopes existed: its tokens keep full access.
    old_token = "pda_0123abcd_" + "A" * 43
    body = {"version": 1, "tokens": [{"id": "0123abcd", "name": "old", "created": 1.0, "digest": hash_token(old_token)}]}
    path.write_text(json.dumps(body))
    os.chmod(path, 0o600)
    assert TokenStore(path).verify(old_token).scope == "admin"
    # An unknown scope in the file is corruption: nothing is accepted (never a guess).
    body["tokens"][0]["scope"] = "superuser"
    path.write_text(json.dumps(body))
    broken = TokenStore(path)
    with pytest.raises(AuthError):
        broken.verify(old_token)
    assert broken.load_error is not None and "superuser" not in broken.load_error and "scope" in broken.load_error


def test_store_file_is_0600_and_new_parent_directory_0700(tmp_path: Path) -> None:
    path = tmp_path / "state" / "predis" / "tokens.json"
    old_umask = os.umask(0)  # even a permissive umask must not loosen the modes
    try:
        TokenStore(path).create()
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_verify_accepts_the_token_and_rejects_everything_else(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("a")
    assert store.verify(token) == record
    for bad in ["", None, token + "x", token[:-1], " " + token, token.upper(), *near_misses(token)]:
        with pytest.raises(AuthError):
            store.verify(bad)


def test_verify_with_no_store_file_rejects(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "absent.json")
    with pytest.raises(AuthError, match="invalid bearer token"):
        store.verify("pda_00000000_" + "A" * 43)
    with pytest.raises(AuthError, match="missing bearer token"):
        store.verify(None)
    assert store.load_error is None and store.records() == []


def test_revoke_makes_the_token_fail_and_keeps_the_others(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    first, rec1 = store.create("one")
    second, rec2 = store.create("two")
    assert store.revoke(rec1.id) is True
    with pytest.raises(AuthError):
        store.verify(first)
    assert store.verify(second) == rec2
    assert store.revoke(rec1.id) is False
    assert store.revoke("nosuchid") is False
    assert [r.id for r in store.records()] == [rec2.id]


def test_a_second_instance_sees_changes_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    agent_side = TokenStore(path)  # e.g. the running agent
    cli_side = TokenStore(path)  # e.g. `predis-agent token create`
    with pytest.raises(AuthError):
        agent_side.verify("pda_00000000_" + "A" * 43)  # loaded the (absent) store once
    token1, rec1 = cli_side.create("first")
    assert agent_side.verify(token1).id == rec1.id
    token2, rec2 = cli_side.create("second")
    assert agent_side.verify(token2).id == rec2.id
    assert cli_side.revoke(rec1.id)
    with pytest.raises(AuthError):
        agent_side.verify(token1)
    path.unlink()
    with pytest.raises(AuthError):
        agent_side.verify(token2)  # the store was deleted: nothing is accepted any more


def test_corrupt_store_accepts_nothing_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token, _ = store.create("x")
    for corrupt in ("{not json", "[]", '{"tokens": [{"id": "x"}]}', '{"tokens": [1]}', '{"tokens": [{"id": "a", "created": "x", "digest": "d"}]}'):
        path.write_text(corrupt)
        reader = TokenStore(path)
        with pytest.raises(AuthError):
            reader.verify(token)
        assert reader.load_error is not None and "no token is accepted" in reader.load_error, corrupt
        with pytest.raises(SecurityError):
            reader.create("y")
        with pytest.raises(SecurityError):
            reader.revoke("x")
        assert path.read_text() == corrupt  # the broken file was not overwritten


def test_corrupt_store_recovers_when_the_file_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    writer = TokenStore(path)
    token, _ = writer.create("x")
    good = path.read_bytes()
    reader = TokenStore(path)
    path.write_text("garbage!")
    with pytest.raises(AuthError):
        reader.verify(token)
    assert reader.load_error
    atomic_write(path, good)
    assert reader.verify(token)
    assert reader.load_error is None


def test_store_with_a_non_ascii_digest_is_rejected_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"version": 1, "tokens": [{"id": "abcd0123", "name": "x", "created": 1.0, "digest": "é" * 64}]}))
    before = path.read_text()
    store = TokenStore(path)
    with pytest.raises(AuthError):
        store.verify("pda_abcd0123_" + "A" * 43)
    assert store.load_error is not None and "no token is accepted" in store.load_error
    assert "abcd0123" in store.load_error and "é" not in store.load_error
    with pytest.raises(SecurityError):
        store.create("y")
    assert path.read_text() == before  # the broken file was not overwritten


# ----------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert os.listdir(tmp_path) == ["out.json"]
    assert mode(target) == 0o600
    atomic_write(target, b"public", mode=0o644)
    assert mode(target) == 0o644


def test_atomic_write_replaces_the_inode_not_the_content_in_place(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    reader = open(target, "rb")
    try:
        atomic_write(target, b"new")
        assert reader.read() == b"old"  # a reader of the old file never sees a half-written new one
    finally:
        reader.close()


def test_atomic_write_failure_cleans_up_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "child").write_text("keep")
    with pytest.raises(OSError):
        atomic_write(target, b"data")  # os.replace onto a non-empty directory fails
    assert sorted(os.listdir(tmp_path)) == ["occupied"]
    assert (target / "child").read_text() == "keep"


# ----------------------------------------------------------------------------- confine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "file").write_text("x")
    (tmp_path / "outside").mkdir()
    (base / "escape").symlink_to(tmp_path / "outside")
    (base / "inner").symlink_to(base / "sub")
    return base


@pytest.mark.parametrize("candidate", ["sub/file", "sub", ".", "new/not/yet", "sub/../sub/file", "inner/file"])
def test_confine_accepts_paths_inside_the_root(root: Path, candidate: str) -> None:
    result = confine(root, candidate)
    assert result == (root / candidate).resolve()
    assert result == root.resolve() or root.resolve() in result.parents


def test_confine_accepts_an_absolute_path_inside_the_root(root: Path) -> None:
    assert confine(root, str(root / "sub" / "file")) == (root / "sub" / "file").resolve()


@pytest.mark.parametrize(
    "candidate",
    ["../x", "..", "sub/../../x", "/etc/passwd", "/", "escape", "escape/secret", "sub/\x00", "a\x00b"],
)
def test_confine_rejects_escapes(root: Path, candidate: str) -> None:
    with pytest.raises(SecurityError):
        confine(root, candidate)


def test_confine_rejects_an_absolute_path_that_merely_shares_a_prefix(root: Path) -> None:
    sibling = root.parent / (root.name + "-evil")
    sibling.mkdir()
    with pytest.raises(SecurityError):
        confine(root, str(sibling / "x"))


def test_confine_error_names_the_path(root: Path) -> None:
    with pytest.raises(SecurityError, match=r"resolves outside its root"):
        confine(root, "../x")
    with pytest.raises(SecurityError, match="NUL byte"):
        confine(root, "a\x00b")


# ----------------------------------------------------------------------------- tenant IDs


@pytest.mark.parametrize("value", ["acme", "a1_b-c", "0ab", "abc", "a" * 50, "z-_9"])
def test_valid_tenant_ids(value: str) -> None:
    assert validate_tenant_id(value) is value


@pytest.mark.parametrize(
    "value",
    ["Ab", "ab", "Acme", "-abc", "_abc", "a" * 51, "abc/../x", "ab c", "", "acme\n", "acmé", "ac.me", 123, None, b"acme"],
)
def test_invalid_tenant_ids(value: object) -> None:
    with pytest.raises(SecurityError, match="invalid tenant ID"):
        validate_tenant_id(value)  # type: ignore[arg-type]


def test_a_token_store_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path) -> None:
    """A FIFO would block the reading thread (the event loop: tokens are checked per request)."""
    fifo = tmp_path / "tokens.json"
    os.mkfifo(fifo, 0o600)
    store = TokenStore(fifo)
    assert store.records() == []
    assert store.load_error is not None and "not a regular file" in store.load_error


def test_an_oversized_token_store_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(b" " * (MAX_TOKEN_STORE_BYTES + 1))
    path.chmod(0o600)
    store = TokenStore(path)
    assert store.records() == []
    assert store.load_error is not None and "over" in store.load_error
