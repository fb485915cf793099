# SPDX-License-Identifier: Apache-2.0
"""Prefetch models on a device array module: the same tables and answers as on the host.

The device is :mod:`tests.fake_device` (NumPy underneath, CuPy's rules on top: no host
array may meet a device array without an explicit copy, no NumPy function on device
arrays, no element-by-element iteration), and CuPy itself as well when
``PREDIS_TEST_BACKEND=cupy`` (the GPU check). On a device every batch takes the array
paths, so comparing against the host (which takes the Python-scalar paths for short
batches) also checks that both paths agree. Speed is for ``bench/bench_prefetch.py
--inference-only --backend cupy`` to say, on a GPU.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy
import pytest

from cache_core.backend import to_host
from cache_core.cache import Cache
from cache_core.models import ContextMarkov, MarkovModel, Vocabulary, make_model, model_array_module, place_model, successor_tables
from cache_core.models.markov import SuccessorTable
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.prefetch import test_inference as run_test_inference
from cache_core.replay import replay
from tests import fake_device
from tests.fake_device import DeviceTransferError

DEVICES = [pytest.param(fake_device, id="stand-in")]
if os.environ.get("PREDIS_TEST_BACKEND", "numpy") == "cupy":
    DEVICES.append(pytest.param(pytest.importorskip("cupy"), id="cupy"))

# Batch sizes from one access to past every scalar threshold, in a fixed irregular order.
BATCHES = [1, 3, 8, 9, 1, 50, 2, 300, 7, 33, 1, 120, 16, 4, 600]


def stream(seed: int, n: int = 6000) -> list[bytes]:
    """A mixture with something for every path: a Markov chain (successor rows filling up and
    being taken over), a scan (stride runs), a two-key ping-pong (one slot counted up many
    times in one batch) and random keys (new successors, many per context)."""
    rng = numpy.random.default_rng(seed)
    out: list[bytes] = []
    state, block = 0, 0
    while len(out) < n:
        kind = rng.integers(0, 4)
        if kind == 0:
            for _ in range(int(rng.integers(5, 60))):
                state = (state * 7 + int(rng.integers(0, 3))) % 400
                out.append(b"chain:%d" % state)
        elif kind == 1:
            for _ in range(int(rng.integers(5, 80))):
                block += 1
                out.append(b"blk:%06d" % block)
        elif kind == 2:
            out.extend([b"ping", b"pong"] * int(rng.integers(5, 30)))
        else:
            out.extend(b"rand:%d" % x for x in rng.integers(0, 3000, int(rng.integers(5, 60))).tolist())
    return out[:n]


def batches(keys: list[bytes]) -> list[list[bytes]]:
    out, i, b = [], 0, 0
    while i < len(keys):
        size = BATCHES[b % len(BATCHES)]
        out.append(keys[i : i + size])
        i, b = i + size, b + 1
    return out


def tables(model: object, seen: bool = True) -> list[tuple[numpy.ndarray, ...]]:
    """Each successor table's arrays on the host (with its decay counter, which files do not
    keep, if ``seen``), and each order-2 model's row owners."""
    parts = [model, *getattr(model, "experts", [])]
    out = []
    for part in parts:
        table = getattr(part, "table", None)
        if isinstance(table, SuccessorTable):
            out.append((to_host(table.succ), to_host(table.count), *([numpy.int64(table.seen)] if seen else [])))
        owner = getattr(part, "owner", None)
        if owner is not None:
            out.append((to_host(owner),))
    return out


def assert_same_state(host: object, device: object, seen: bool = True) -> None:
    for want, got in zip(tables(host, seen), tables(device, seen), strict=True):
        for w, g in zip(want, got, strict=True):
            assert numpy.array_equal(w, g)


@pytest.fixture(params=DEVICES)
def xp(request: pytest.FixtureRequest) -> object:
    return request.param


def run_pair(kind: str, seed: int, xp: object, k: int = 3) -> tuple[object, object, Vocabulary, Vocabulary]:
    """Learn one stream on the host and on the device, comparing every batch's predictions."""
    hv, dv = Vocabulary(1 << 14), Vocabulary(1 << 14)
    host = make_model(kind, hv, 4096)
    device = make_model(kind, dv, 4096, xp=xp)
    for batch in batches(stream(seed)):
        hi, di = hv.encode_many(batch), dv.encode_many(batch)
        assert numpy.array_equal(hi, di)
        host.observe(hi)
        device.observe(di)
        tail_h, tail_d = hi[-4:], di[-4:]
        hc, hs = host.predict(tail_h, k)
        dc, ds = device.predict(tail_d, k)
        assert type(dc) is numpy.ndarray and type(ds) is numpy.ndarray, "predictions come back as host arrays"
        assert numpy.array_equal(hc, dc) and numpy.array_equal(hs, ds)
    return host, device, hv, dv


@pytest.mark.parametrize("kind", ["markov", "model"])
@pytest.mark.parametrize("seed", [1, 2])
def test_device_model_learns_and_predicts_as_the_host_does(kind: str, seed: int, xp: object) -> None:
    host, device, _, _ = run_pair(kind, seed, xp)
    assert model_array_module(device) is xp and model_array_module(host) is numpy
    assert all(type(t.succ) is not numpy.ndarray for t in successor_tables(device))
    assert_same_state(host, device)
    if kind == "model":
        assert numpy.array_equal(host.hits, device.hits) and numpy.array_equal(host.proposals, device.proposals)


def test_context_markov_take_overs_on_the_device(xp: object) -> None:
    """A table small enough that pairs collide: rows change hands inside one batch."""
    rng = numpy.random.default_rng(5)
    host, device = ContextMarkov(37), ContextMarkov(37, xp=xp)
    ids = rng.integers(0, 200, 5000)
    start = 0
    for size in BATCHES * 20:
        chunk = ids[start : start + size]
        if chunk.shape[0] == 0:
            break
        host.observe(chunk)
        device.observe(chunk)
        start += size
        assert numpy.array_equal(host.predict(chunk[-3:], 2)[0], device.predict(chunk[-3:], 2)[0])
    assert_same_state(host, device)
    assert (host.prev, host.last) == (device.prev, device.last)


def test_single_accesses_on_the_device_match_one_row_predictions(xp: object) -> None:
    """observe_one / predict_one on a device run as batches of one; they answer what the
    host's array path answers for that row."""
    vocab = Vocabulary(1024)
    host, device = MarkovModel(1024), MarkovModel(1024, xp=xp)
    for key in stream(3, 1500):
        ident = vocab.encode(key)
        host.observe_one(ident)
        device.observe_one(ident)
        cand, conf = host.predict(numpy.array([ident]), 2)
        want = [(c, f) for c, f in zip(cand[0].tolist(), conf[0].tolist()) if c >= 0 and f > 0]
        assert device.predict_one(ident, 2) == want
    assert_same_state(host, device)


@pytest.mark.parametrize("kind", ["markov", "model"])
def test_device_models_save_load_copy_and_move(kind: str, tmp_path: Path, xp: object) -> None:
    host, device, hv, _ = run_pair(kind, 4, xp)
    probe = hv.encode_many(stream(9, 200))
    # Predicting changes a model (the mixture's open proposals, names the stride expert
    # adds): the twin to move is taken before.
    moved, moved_vocab = copy.deepcopy((host, hv))
    want = host.predict(probe, 3)
    # Saved from the device, loaded on the host (and the other way round).
    device.save(tmp_path / "d.npz")
    loaded = make_model(kind, hv, 4096)
    loaded.load(tmp_path / "d.npz")
    assert_same_state(host, loaded, seen=False)
    host.save(tmp_path / "h.npz")
    on_device = make_model(kind, hv, 4096, xp=xp)
    on_device.load(tmp_path / "h.npz")
    assert_same_state(host, on_device, seen=False)
    # Deep copies and pickles keep the array module (it travels by name).
    for twin in (copy.deepcopy(device), pickle.loads(pickle.dumps(device))):
        assert model_array_module(twin) is xp
        assert_same_state(host, twin)
    # Moved to the device and back, a model answers as before.
    place_model(moved, xp)
    assert model_array_module(moved) is xp
    got = moved.predict(probe, 3)
    assert numpy.array_equal(got[0], want[0]) and numpy.array_equal(got[1], want[1])
    place_model(moved, numpy)
    assert model_array_module(moved) is numpy and type(tables(moved)[0][0]) is numpy.ndarray
    assert_same_state(host, moved)


def test_stride_model_stays_on_the_host() -> None:
    vocab = Vocabulary(256)
    model = place_model(make_model("stride", vocab, xp=fake_device), fake_device)
    assert model_array_module(model) is numpy
    model.observe(vocab.encode_many([b"blk:%d" % i for i in range(20)]))
    assert [vocab.decode(c) for c, _ in model.predict_one(vocab.encode(b"blk:19"), 2)] == [b"blk:20", b"blk:21"]


def test_the_stand_in_device_refuses_what_cupy_refuses() -> None:
    """The checks above mean something only if the stand-in really refuses host arrays."""
    dev = fake_device.asarray([1, 2, 3])
    host = numpy.array([1, 2, 3])
    with pytest.raises(DeviceTransferError):
        _ = dev + host
    with pytest.raises(DeviceTransferError):
        numpy.sort(dev)
    with pytest.raises(DeviceTransferError):
        _ = dev[host]
    with pytest.raises(DeviceTransferError):
        dev[:] = host
    with pytest.raises(DeviceTransferError):
        list(dev)
    with pytest.raises(DeviceTransferError):
        fake_device.concatenate([[0], dev])
    with pytest.raises(DeviceTransferError):
        numpy.maximum.accumulate(dev)
    with pytest.raises(AttributeError):
        _ = fake_device.fromiter
    assert type(dev.get()) is numpy.ndarray and int((dev * 2).sum()) == 12


@pytest.mark.parametrize("kind", ["markov", "model"])
def test_replay_on_a_device_model_gives_the_host_figures(kind: str, xp: object) -> None:
    """The prefetcher puts its model on its array module; the replayed figures (hits,
    prefetches, precision) are the host's, to the request."""
    keys = stream(6, 3000)
    host = replay(keys, 300, prefetch=kind)
    device = replay(keys, 300, prefetch=kind, xp=xp)
    assert host["prefetch_used"] > 0
    for field in ("requests", "hits", "prefetches", "prefetch_used", "prefetch_precision", "final_threshold"):
        assert device[field] == host[field], field


def test_prefetcher_places_served_and_swapped_models_on_its_module(xp: object) -> None:
    vocab = Vocabulary(1 << 10)
    cache = Cache(numpy, max_keys=1 << 10, max_memory_bytes=1 << 20)
    prefetcher = Prefetcher(cache, None, make_model("model", vocab), vocab, PrefetchSettings(), sync=True, xp=xp)
    assert model_array_module(prefetcher.model) is xp
    assert prefetcher.status()["backend"] == xp.__name__.rsplit(".", 1)[-1]
    assert run_test_inference(prefetcher.model, vocab, 2)[0]
    fresh = make_model("markov", vocab)
    prefetcher.swap_model(fresh, vocab, 2, (True, "ok"))
    assert model_array_module(prefetcher.model) is xp
    prefetcher.observe([b"a", b"b", b"a", b"b"])
    assert prefetcher.stats.observed == 4


def test_the_stand_in_argsort_is_cupys() -> None:
    dev = fake_device.asarray([3, 1, 3, 1, 2])
    assert fake_device.argsort(dev).tolist() == [1, 3, 4, 0, 2]  # stable, as CuPy's
    with pytest.raises(TypeError):
        fake_device.argsort(dev, kind="stable")
