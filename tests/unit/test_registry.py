# SPDX-License-Identifier: Apache-2.0
"""The model registry (agent/mlops/registry.py) and training (agent/mlops/training.py).

What must hold: versions are numbered 1, 2, ... even with concurrent writers; a changed
artefact is refused; every alias move is audited and rollback walks that history;
backups restore byte for byte and a hostile archive writes nothing; a bad tenant ID is
refused before any file exists.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy
import pytest

from agent.errors import SecurityError
from agent.mlops.registry import (
    ALIASES_FILE,
    AUDIT_FILE,
    LOCK_FILE,
    META_FILE,
    MODEL_FILE,
    VOCAB_FILE,
    ModelRegistry,
    RegistryError,
    backup_create,
    backup_restore,
    keys_digest,
    load_vocabulary,
    save_model,
    save_vocabulary,
)
from agent.mlops.training import (
    MIN_EVAL_CACHE_ENTRIES,
    TrainingError,
    beats,
    eval_cache_entries,
    evaluate,
    train_and_register,
    train_from_trace,
)
from cache_core.models import Vocabulary, make_model
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"
BAD_TENANTS = ["../x", "A B", "", "ab", "x" * 51, "-abc", "a/b", "acme\x00"]
WRITERS = 4


def sequential(n: int = 600) -> list[bytes]:
    return [b"block:%06d" % i for i in range(n)]


def markovish(n: int = 600, states: int = 60, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    names = [b"item:%s" % bytes([97 + i % 26]) * (1 + i // 26) for i in range(states)]
    successors = {name: [rng.choice(names) for _ in range(2)] for name in names}
    current, out = names[0], []
    for _ in range(n):
        out.append(current)
        current = rng.choice(successors[current]) if rng.random() < 0.9 else rng.choice(names)
    return out


def artefacts(directory: Path, kind: str = "stride", keys: list[bytes] | None = None) -> Path:
    """A small trained model saved into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary(4096)
    model = make_model(kind, vocab)
    model.observe(vocab.encode_many(keys or sequential(200)))
    save_model(model, vocab, directory)
    return directory


def meta(kind: str = "stride", **extra: object) -> dict:
    return {"kind": kind, "training": {"requests": 200, "trace": "unit"}, "data_hash": keys_digest(sequential(200)), "metrics": {"candidate_hit_ratio": 0.5}, **extra}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return artefacts(tmp_path / "artefacts")


def tree(root: Path) -> dict[str, bytes]:
    """Every registry file under ``root`` by relative path (the lock file aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


# ----------------------------------------------------------------------------- versions
def test_versions_are_monotonic_and_the_first_becomes_champion(registry: ModelRegistry, files: Path) -> None:
    assert [registry.register(TENANT, files, meta()) for _ in range(3)] == [1, 2, 3]
    assert registry.versions(TENANT) == [1, 2, 3]
    assert registry.aliases(TENANT) == {"champion": 1, "challenger": None}
    rows = registry.list(TENANT)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert rows[0]["aliases"] == ["champion"] and rows[1]["aliases"] == []
    audit = registry.audit(TENANT)
    assert len(audit) == 1
    assert audit[0]["reason"] == "first model" and audit[0]["alias"] == "champion"
    assert audit[0]["from"] is None and audit[0]["to"] == 1
    assert {"time", "alias", "from", "to", "reason", "actor"} <= set(audit[0])
    # Another tenant numbers its own versions.
    assert registry.register("other-tenant", files, meta()) == 1


def test_meta_records_checksums_parent_and_training(registry: ModelRegistry, files: Path) -> None:
    registry.register(TENANT, files, meta())
    registry.register(TENANT, files, meta(drift={"status": "drift"}))
    first, second = registry.meta(TENANT, 1), registry.meta(TENANT, 2)
    assert first["version"] == 1 and first["parent"] is None
    assert second["parent"] == 1 and second["drift"] == {"status": "drift"}
    assert set(first["artefacts"]) == {MODEL_FILE, VOCAB_FILE}
    assert all(len(digest) == 64 for digest in first["artefacts"].values())
    assert first["training"] == {"requests": 200, "trace": "unit"}
    assert first["data_hash"] == keys_digest(sequential(200))
    assert time.strptime(first["created_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_files_are_private_and_no_staging_is_left(registry: ModelRegistry, files: Path) -> None:
    registry.register(TENANT, files, meta())
    tenant_dir = registry.root / TENANT
    for directory in (registry.root, tenant_dir, tenant_dir / "v1"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in [*(tenant_dir / "v1").iterdir(), tenant_dir / ALIASES_FILE, tenant_dir / AUDIT_FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in tenant_dir.iterdir()) == [LOCK_FILE, ALIASES_FILE, AUDIT_FILE, "v1"]


def test_register_refuses_bad_input(registry: ModelRegistry, tmp_path: Path, files: Path) -> None:
    with pytest.raises(RegistryError, match="kind"):
        registry.register(TENANT, files, meta(kind="lstm"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no artefact"):
        registry.register(TENANT, tmp_path / "empty", meta())
    os.symlink(files / MODEL_FILE, tmp_path / "link.npz")
    with pytest.raises(RegistryError, match="not a regular file"):
        registry.register(TENANT, [tmp_path / "link.npz"], meta())
    assert registry.versions(TENANT) == []


_WRITER = """
import sys
from pathlib import Path
from agent.mlops.registry import ModelRegistry
from tests.polling import wait_for
root, files, start, mode, arg = sys.argv[1:6]
Path(f"{start}.ready-{arg}").touch()
wait_for(Path(start).exists, timeout=60, interval=0.001, what="the start line")
registry = ModelRegistry(root)
if mode == "register":
    print(registry.register("acme", files, {"kind": "stride", "metrics": {}}))
else:
    print(len(registry.promote("acme", int(arg), "challenger", f"writer {arg}", f"writer-{arg}")))
"""


def _race(tmp_path: Path, registry: ModelRegistry, files: Path, mode: str) -> list[str]:
    start = tmp_path / f"start-{mode}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(registry.root), str(files), str(start), mode, str(i + 1)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(WRITERS)
    ]
    wait_for(lambda: len(list(tmp_path.glob(f"{start.name}.ready-*"))) == WRITERS, timeout=60, what="every writer at the start line")
    start.touch()  # every writer is at the line: they race for the lock from here
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    return outputs


def test_concurrent_writers_get_distinct_versions_and_lose_no_alias_move(registry: ModelRegistry, files: Path, tmp_path: Path) -> None:
    versions = _race(tmp_path, registry, files, "register")
    assert sorted(int(v) for v in versions) == list(range(1, WRITERS + 1))
    assert registry.versions(TENANT) == list(range(1, WRITERS + 1))
    for version in registry.versions(TENANT):
        assert registry.check(TENANT, version) == []
    # Exactly one of them found no champion.
    assert [e["reason"] for e in registry.audit(TENANT)] == ["first model"]

    assert _race(tmp_path, registry, files, "promote") == ["1"] * WRITERS
    moves = [e for e in registry.audit(TENANT) if e["alias"] == "challenger"]
    assert len(moves) == WRITERS
    # Each move starts where the previous one ended: none was lost or overwritten.
    assert moves[0]["from"] is None
    assert all(later["from"] == earlier["to"] for earlier, later in itertools.pairwise(moves))
    assert registry.aliases(TENANT)["challenger"] == moves[-1]["to"]


# ----------------------------------------------------------------------------- verification
def test_corrupted_artefact_is_refused_by_load_and_show(registry: ModelRegistry, files: Path) -> None:
    registry.register(TENANT, files, meta())
    assert registry.show(TENANT, 1)["verification"] == {"ok": True, "problems": []}
    target = registry.root / TENANT / "v1" / MODEL_FILE
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    shown = registry.show(TENANT, 1)
    assert shown["verification"]["ok"] is False
    assert any(MODEL_FILE in p and "sha256 mismatch" in p for p in shown["verification"]["problems"])
    with pytest.raises(RegistryError, match="corrupted"):
        registry.load_model(TENANT, 1)
    with pytest.raises(RegistryError, match="corrupted"):
        registry.load_model(TENANT, "champion")
    with pytest.raises(RegistryError, match="corrupted"):
        registry.promote(TENANT, 1, "challenger")


def test_missing_and_unlisted_files_are_reported(registry: ModelRegistry, files: Path) -> None:
    registry.register(TENANT, files, meta())
    version_dir = registry.root / TENANT / "v1"
    (version_dir / VOCAB_FILE).unlink()
    (version_dir / "extra.npz").write_bytes(b"x")
    problems = registry.check(TENANT, 1)
    assert f"{VOCAB_FILE}: missing" in problems
    assert any(p.startswith("extra.npz") for p in problems)
    (version_dir / META_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        registry.show(TENANT, 1)


def test_unknown_versions_and_aliases(registry: ModelRegistry, files: Path) -> None:
    with pytest.raises(RegistryError, match="no models yet"):
        registry.show(TENANT, 1)
    with pytest.raises(RegistryError, match="no champion"):
        registry.load_model(TENANT, "champion")
    registry.register(TENANT, files, meta())
    with pytest.raises(RegistryError, match="known versions: 1"):
        registry.show(TENANT, 9)
    with pytest.raises(RegistryError, match="neither a version"):
        registry.resolve(TENANT, "latest")
    assert registry.resolve(TENANT, "v1") == registry.resolve(TENANT, "1") == registry.resolve(TENANT, "champion") == 1


@pytest.mark.parametrize("kind", ["stride", "markov", "model", "federated"])
def test_load_model_restores_state_and_vocabulary(registry: ModelRegistry, tmp_path: Path, kind: str) -> None:
    keys = sequential(300) + markovish(300)
    vocab = Vocabulary(4096)
    model = make_model(kind, vocab)
    model.observe(vocab.encode_many(keys))
    save_model(model, vocab, tmp_path / "a")
    registry.register(TENANT, tmp_path / "a", meta(kind=kind))
    loaded, loaded_vocab = registry.load_model(TENANT, 1)
    assert loaded.name == kind
    assert loaded_vocab.keys == vocab.keys and loaded_vocab.capacity == vocab.capacity
    assert loaded_vocab.prefix_keys == vocab.prefix_keys
    ids = vocab.encode_many(keys[-20:])
    assert numpy.array_equal(loaded_vocab.encode_many(keys[-20:]), ids)
    want, got = model.predict(ids, 2), loaded.predict(ids, 2)
    assert numpy.array_equal(want[0], got[0]) and numpy.allclose(want[1], got[1])


def test_vocabulary_file_round_trip_without_pickle(tmp_path: Path) -> None:
    vocab = Vocabulary(64)
    for key in [b"", b"a\nb", b"\x00\xff", b"block:007", b"block:008"]:
        vocab.encode(key)
    save_vocabulary(vocab, tmp_path / "v.npz")
    with numpy.load(tmp_path / "v.npz", allow_pickle=False) as data:
        assert data["blob"].dtype == numpy.uint8
    again = load_vocabulary(tmp_path / "v.npz")
    assert again.keys == vocab.keys and again.ids == vocab.ids and again.capacity == 64
    assert numpy.array_equal(again.prefix_of, vocab.prefix_of) and numpy.array_equal(again.width_of, vocab.width_of)


# ----------------------------------------------------------------------------- aliases and rollback
def test_alias_moves_are_audited(registry: ModelRegistry, files: Path) -> None:
    for _ in range(2):
        registry.register(TENANT, files, meta())
    [entry] = registry.promote(TENANT, 2, "challenger", "canary", "alice")
    assert entry["alias"] == "challenger" and entry["from"] is None and entry["to"] == 2 and entry["actor"] == "alice"
    assert registry.promote(TENANT, 2, "challenger", "again", "alice") == []
    written = registry.promote(TENANT, "2", "champion", "canary passed", "bob")
    assert [(e["alias"], e["from"], e["to"]) for e in written] == [("champion", 1, 2), ("challenger", 2, None)]
    assert registry.aliases(TENANT) == {"champion": 2, "challenger": None}
    audit = registry.audit(TENANT)
    assert [(e["alias"], e["to"], e["reason"]) for e in audit] == [
        ("champion", 1, "first model"),
        ("challenger", 2, "canary"),
        ("champion", 2, "canary passed"),
        ("challenger", None, "v2 promoted to champion"),
    ]
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.promote(TENANT, 1, "production")
    raw = (registry.root / TENANT / AUDIT_FILE).read_text().splitlines()
    assert [json.loads(line) for line in raw] == audit


def test_rollback_returns_to_the_previous_champion(registry: ModelRegistry, files: Path) -> None:
    for _ in range(3):
        registry.register(TENANT, files, meta())
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(TENANT, "too early")
    registry.promote(TENANT, 2, reason="better")
    registry.promote(TENANT, 3, reason="better still")
    entry = registry.rollback(TENANT, "v3 regressed", "oncall")
    assert (entry["from"], entry["to"], entry["action"], entry["reason"]) == (3, 2, "rollback", "v3 regressed")
    assert registry.aliases(TENANT)["champion"] == 2
    assert registry.rollback(TENANT, "v2 too")["to"] == 1
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(TENANT, "nothing left")
    assert registry.champion_history(TENANT) == [1]


def test_rollback_without_models(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="no models yet"):
        registry.rollback(TENANT, "x")
    assert not registry.root.exists()


# ----------------------------------------------------------------------------- tenant IDs
@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_invalid_tenant_ids_are_rejected_before_any_file_exists(tmp_path: Path, files: Path, tenant: str) -> None:
    root = tmp_path / "fresh-registry"
    registry = ModelRegistry(root)
    calls = [
        lambda: registry.register(tenant, files, meta()),
        lambda: registry.list(tenant),
        lambda: registry.show(tenant, 1),
        lambda: registry.promote(tenant, 1),
        lambda: registry.rollback(tenant, "x"),
        lambda: registry.audit(tenant),
        lambda: registry.load_model(tenant, "champion"),
        lambda: train_and_register(registry, tenant, sequential(100), kind="stride"),
    ]
    for call in calls:
        with pytest.raises(SecurityError, match="invalid tenant ID"):
            call()
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefacts"]


# ----------------------------------------------------------------------------- backup and restore
def _populated(registry: ModelRegistry, tmp_path: Path) -> None:
    files = artefacts(tmp_path / "mixture", "model", markovish(200))
    for _ in range(3):
        registry.register(TENANT, files, meta(kind="model"))
    registry.register("beta-co", files, meta(kind="model"))
    registry.promote(TENANT, 2, "challenger", "canary")
    registry.promote(TENANT, 3, "champion", "manual")
    registry.rollback(TENANT, "regressed")


def test_backup_restore_reproduces_versions_aliases_and_audit(registry: ModelRegistry, tmp_path: Path) -> None:
    _populated(registry, tmp_path)
    archive = tmp_path / "backup.tar.gz"
    manifest = backup_create(registry.root, archive)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert f"{TENANT}/{AUDIT_FILE}" in manifest["files"] and "beta-co/v1/meta.json" in manifest["files"]
    target = tmp_path / "restored"
    backup_restore(archive, target)
    assert tree(target) == tree(registry.root)
    restored = ModelRegistry(target)
    assert restored.list(TENANT) == registry.list(TENANT)
    assert restored.aliases(TENANT) == registry.aliases(TENANT)
    assert restored.audit(TENANT) == registry.audit(TENANT)
    model, vocab = restored.load_model(TENANT, "champion")
    assert model.name == "model" and len(vocab) > 0
    # The restored registry keeps working: numbering continues, rollback history too.
    assert restored.register(TENANT, tmp_path / "mixture", meta(kind="model")) == 4
    # An existing empty directory is fine as well.
    (tmp_path / "empty").mkdir()
    backup_restore(archive, tmp_path / "empty")
    assert tree(tmp_path / "empty") == tree(registry.root)


def test_restore_refuses_a_non_empty_directory(registry: ModelRegistry, tmp_path: Path) -> None:
    _populated(registry, tmp_path)
    backup_create(registry.root, tmp_path / "b.tgz")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(RegistryError, match="not an empty directory"):
        backup_restore(tmp_path / "b.tgz", target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    with pytest.raises(RegistryError, match="inside|outside"):
        backup_create(registry.root, registry.root / "x.tgz")


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if info.isfile():
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../evil"), "'..'"),
        (_member("acme/../../evil"), "'..'"),
        (_member("/tmp/predis-evil-absolute"), "absolute"),
        (_member("acme/v1/model.npz", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("acme/v1/model.npz", tarfile.LNKTYPE, "/etc/passwd"), "link"),
        (_member("acme/v1/dev", tarfile.CHRTYPE), "device"),
        (_member("acme/v1/fifo", tarfile.FIFOTYPE), "special"),
        (_member("Bad Tenant/aliases.json"), "invalid tenant ID"),
        (_member("acme/v1/deep/file.npz"), "nested"),
    ],
)
def test_restore_refuses_a_malicious_archive(tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    legit = _member("acme/aliases.json")
    manifest = _member("MANIFEST.json")
    archive = _archive(tmp_path / "evil.tgz", [(legit, b"{}"), (member, b"pwned"), (manifest, b'{"format": 1, "files": {}}')])
    target = tmp_path / "target"
    with pytest.raises(RegistryError, match=why):
        backup_restore(archive, target)
    assert not target.exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/predis-evil-absolute").exists()


def test_restore_verifies_checksums_and_cleans_up(registry: ModelRegistry, tmp_path: Path) -> None:
    _populated(registry, tmp_path)
    good = tmp_path / "good.tgz"
    backup_create(registry.root, good)
    members = []
    with tarfile.open(good, "r:gz") as archive:
        for info in archive.getmembers():
            data = archive.extractfile(info).read()
            if info.name == f"{TENANT}/v1/{MODEL_FILE}":
                data = data[:-1] + bytes([data[-1] ^ 1])
            members.append((info, data))
    tampered = _archive(tmp_path / "tampered.tgz", members)
    target = tmp_path / "target"
    with pytest.raises(RegistryError, match="checksum mismatch"):
        backup_restore(tampered, target)
    assert not target.exists()
    (tmp_path / "garbage.tgz").write_bytes(b"not an archive")
    with pytest.raises(RegistryError, match="not a readable"):
        backup_restore(tmp_path / "garbage.tgz", target)
    assert not target.exists()


# ----------------------------------------------------------------------------- training
def test_train_from_trace_splits_and_judges_on_the_held_out_tail() -> None:
    keys = sequential(1000)
    result = train_from_trace(keys, "stride", 0.2)
    assert (result.train_keys, result.holdout_keys) == (800, 200)
    assert result.data_hash == keys_digest(keys[:800])
    assert result.cache_entries == MIN_EVAL_CACHE_ENTRIES
    assert result.metrics["baseline_hit_ratio"] == 0.0
    assert result.metrics["candidate_hit_ratio"] > 0.9
    assert result.metrics["champion_hit_ratio"] is None
    # The champion is replayed on the same tail.
    markov = train_from_trace(keys, "markov", 0.2, champion=(result.model, result.vocab))
    assert markov.metrics["champion_hit_ratio"] == pytest.approx(result.metrics["candidate_hit_ratio"])
    assert markov.metrics["candidate_hit_ratio"] < markov.metrics["champion_hit_ratio"]


def test_training_settings_are_checked() -> None:
    with pytest.raises(TrainingError, match="unknown model kind"):
        train_from_trace(sequential(100), "lstm")
    with pytest.raises(TrainingError, match="between 0 and 1"):
        train_from_trace(sequential(100), "stride", 1.5)
    with pytest.raises(TrainingError, match="cannot be split"):
        train_from_trace([b"k"], "stride")
    assert eval_cache_entries(sequential(100_000), 0.01) == 1000
    assert eval_cache_entries(sequential(10), 0.01) == MIN_EVAL_CACHE_ENTRIES


def test_evaluate_leaves_the_model_it_was_given_unchanged(tmp_path: Path) -> None:
    keys = markovish(600)
    result = train_from_trace(keys, "model")
    save_model(result.model, result.vocab, tmp_path / "before")
    figures = evaluate(result.model, result.vocab, keys[-200:], 16)
    save_model(result.model, result.vocab, tmp_path / "after")
    assert figures["requests"] == 200 and 0 <= figures["hit_ratio"] <= 1
    for name in sorted(p.name for p in (tmp_path / "before").iterdir()):
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes(), name


def test_beats_needs_a_strict_gain_of_at_least_the_margin() -> None:
    assert beats(0.1, None, 0.5)
    assert not beats(0.5, 0.5, 0.0)
    assert beats(0.5001, 0.5, 0.0)
    assert not beats(0.504, 0.5, 0.005)
    assert beats(0.506, 0.5, 0.005)


def test_train_and_register_registers_only_a_better_candidate(registry: ModelRegistry) -> None:
    first = train_and_register(registry, TENANT, sequential(1000), kind="stride", trace_name="seq.txt", actor="ci")
    assert (first["registered"], first["version"], first["alias"]) == (True, 1, "champion")
    assert registry.audit(TENANT)[0]["reason"] == "first model"
    meta_1 = registry.meta(TENANT, 1)
    assert meta_1["training"]["trace"] == "seq.txt" and meta_1["training"]["requests"] == 800
    same = train_and_register(registry, TENANT, sequential(1000), kind="stride")
    assert same["registered"] is False and same["version"] is None
    assert registry.versions(TENANT) == [1]
    better = train_and_register(registry, TENANT, markovish(1000), kind="markov", trace_name="mk.txt", actor="ci")
    assert better["registered"] and better["alias"] == "challenger" and better["version"] == 2
    assert better["candidate_hit_ratio"] > better["champion_hit_ratio"]
    assert registry.meta(TENANT, 2)["parent"] == 1
    # The champion is still the stride model: a Markov candidate on another trace beats it.
    promoted = train_and_register(registry, TENANT, markovish(1000, seed=8), kind="markov", promote=True, margin=0.0)
    assert (promoted["registered"], promoted["version"], promoted["alias"], promoted["champion_version"]) == (True, 3, "champion", 1)
    assert registry.aliases(TENANT) == {"champion": 3, "challenger": 2}
