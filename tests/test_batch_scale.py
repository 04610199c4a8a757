"""Issue 8, batch at scale: the on-disk mask cache (hits skip the network, bounded size, safe for concurrent
writers) and Dask distributed mode (LocalCluster on 127.0.0.1, a worker SIGKILLed mid-run).

The segmentation network here is a *randomly initialised* tiny HyperDETR checkpoint written to tmp_path with the
segmentation package's own save_checkpoint: its masks are meaningless but it runs the real network code path, so
"the network ran / did not run" and the cache round trip are tested whether or not trained weights are installed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from campipe.batch import MANIFEST_NAME, MaskCache, RenderJob, render_one
from campipe.frame import PersonInstance
from test_batch import _card, _manifest
from test_reliability_inputs import good_dng

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.config import HyperDETRConfig
    from campipe.segmentation.model import build_model

    torch.manual_seed(0)
    cfg = HyperDETRConfig(width_mult=0.5, hidden_dim=32, dim_feedforward=64, enc_layers=1, dec_layers=1,
                          input_size=(64, 96), decoder_dims=(16, 16, 16, 16), mask_dim=8)
    model = build_model(cfg).eval()
    return save_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", model)


# ------------------------------------------------------------------------------------------------ MaskCache ----

def _masks(rng, h=24, w=32):
    return ({k: rng.random((h, w), dtype=np.float32) for k in ("sky", "person", "hair")},
            [PersonInstance(rng.random((h, w), dtype=np.float32), 0.9)])


def test_mask_cache_round_trip_and_misses(tmp_path, rng):
    c = MaskCache(tmp_path / "c")
    masks, persons = _masks(rng)
    k = MaskCache.make_key("inputhash", "model:abc", {"max_side": 1024}, False)
    assert c.get(k, (24, 32)) is None
    c.put(k, masks, persons, {"model": "x"})
    got_masks, got_persons, info = c.get(k, (24, 32))
    assert set(got_masks) == set(masks) and info == {"model": "x"}
    for name in masks:
        assert got_masks[name].dtype == np.float32
        np.testing.assert_allclose(got_masks[name], masks[name], atol=5e-4)
    assert got_persons[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(got_persons[0].mask, persons[0].mask, atol=5e-4)
    assert c.get(k, (48, 64)) is None  # another resolution is a miss
    # every part of the key matters
    assert len({k, MaskCache.make_key("other", "model:abc", {"max_side": 1024}, False),
                MaskCache.make_key("inputhash", "model:def", {"max_side": 1024}, False),
                MaskCache.make_key("inputhash", "model:abc", {"max_side": 512}, False),
                MaskCache.make_key("inputhash", "model:abc", {"max_side": 1024}, True)}) == 5
    c.path(k).write_bytes(b"torn")  # a damaged entry is a miss and is removed
    assert c.get(k, (24, 32)) is None and not c.path(k).exists()


def test_mask_cache_is_size_bounded_lru(tmp_path, rng):
    c = MaskCache(tmp_path / "c", max_bytes=1)
    one = MaskCache(tmp_path / "probe")
    masks, persons = _masks(rng)
    one.put("aa" * 20, masks, persons)
    entry = one.size()
    c.max_bytes = int(entry * 3.5)
    keys = [f"{i:02d}" * 20 for i in range(6)]
    for i, k in enumerate(keys):
        c.put(k, masks, persons)
        os.utime(c.path(k), (1000 + i, 1000 + i))
        if i == 2:
            c.get(keys[0], (24, 32))  # touch: 0 becomes the most recently used
            os.utime(c.path(keys[0]), (2000, 2000))
    assert c.size() <= c.max_bytes
    assert c.path(keys[0]).exists() and c.path(keys[-1]).exists()
    assert not c.path(keys[1]).exists()


def _hammer(folder: str, key: str, seed: int, n: int):
    rng = np.random.default_rng(seed)
    c = MaskCache(folder)
    masks = {"sky": np.full((24, 32), rng.random(), np.float32)}
    for _ in range(n):
        c.put(key, masks, [])


def test_mask_cache_concurrent_writers_and_reader(tmp_path):
    import multiprocessing as mp

    folder = tmp_path / "c"
    c = MaskCache(folder)
    key = "ab" * 20
    c.put(key, {"sky": np.zeros((24, 32), np.float32)}, [])
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_hammer, args=(str(folder), key, s, 60)) for s in (1, 2)]
    for p in ps:
        p.start()
    reads = 0
    while any(p.is_alive() for p in ps):
        got = c.get(key, (24, 32))
        assert got is not None  # never a torn or missing entry
        v = got[0]["sky"]
        assert np.ptp(v) == 0  # one writer's complete content
        reads += 1
    for p in ps:
        p.join()
        assert p.exitcode == 0
    assert reads > 0
    assert not [x for x in folder.rglob("*") if ".campipe-tmp-" in x.name]


# ------------------------------------------------------------------------------------- cache in the pipeline ----

def test_cached_masks_skip_the_network_across_styles(tmp_path, tiny_weights, monkeypatch):
    from campipe.api import build
    from campipe.segmentation import inference

    calls = []
    real = inference.Segmenter.__call__

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(inference.Segmenter, "__call__", counting)
    src = good_dng(tmp_path / "p.dng", h=64, w=96)
    sets = [f"segment.weights={tiny_weights}", "segment.runtime=torch"]
    cache = str(tmp_path / "cache")
    std, warm = build("standard", sets), build("warm", sets)
    r1 = render_one(RenderJob(str(src), str(tmp_path / "a.png"), fmt="png", cache_dir=cache), std)
    assert r1.status == "ok" and r1.mask_cache == "miss" and len(calls) == 1
    r2 = render_one(RenderJob(str(src), str(tmp_path / "b.png"), fmt="png", cache_dir=cache), warm)
    assert r2.status == "ok" and r2.mask_cache == "hit" and len(calls) == 1  # another style: no network run
    r3 = render_one(RenderJob(str(src), str(tmp_path / "c.png"), fmt="png"), std)  # no cache: network runs
    assert r3.status == "ok" and r3.mask_cache is None and len(calls) == 2
    r4 = render_one(RenderJob(str(src), str(tmp_path / "d.png"), fmt="png", cache_dir=cache), std)
    assert r4.mask_cache == "hit" and len(calls) == 2
    from PIL import Image

    a = np.asarray(Image.open(tmp_path / "c.png"), np.float64)
    d = np.asarray(Image.open(tmp_path / "d.png"), np.float64)
    mse = np.mean((a - d) ** 2)
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) > 45  # float16 masks: visually identical output


def test_cache_is_not_filled_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(tmp_path / "none.pt"))
    src = good_dng(tmp_path / "p.dng")
    from campipe.api import build

    r = render_one(RenderJob(str(src), str(tmp_path / "a.jpg"), cache_dir=str(tmp_path / "cache")), build("standard"))
    assert r.status == "ok" and r.mask_cache == "miss"
    assert not list((tmp_path / "cache").rglob("*.npz"))


# ----------------------------------------------------------------------------------------------------- Dask -----

@pytest.mark.slow
def test_dask_cluster_with_a_worker_killed_mid_run(tmp_path, tiny_weights, monkeypatch):
    distributed = pytest.importorskip("distributed")
    src = _card(tmp_path / "card", 0, names=[f"img{i}.dng" for i in range(8)])
    out = tmp_path / "out"
    monkeypatch.setenv("CAMPIPE_TEST_FAULT", "sleep=1.0:*")  # inherited by the worker processes: slow tasks
    monkeypatch.setenv("CAMPIPE_WEIGHTS", str(tiny_weights))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=40)
    try:
        client = distributed.Client(cluster)
        env = dict(os.environ)
        env.pop("CAMPIPE_TEST_FAULT")
        p = subprocess.Popen([sys.executable, "-m", "campipe.cli", "batch", str(src), "-o", str(out),
                              "--scheduler", cluster.scheduler_address, "--set", "segment.runtime=torch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if (out / MANIFEST_NAME).exists() and any(r["event"] == "done" for r in _manifest(out)):
                break
            assert p.poll() is None, p.communicate()
            time.sleep(0.05)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)  # a worker dies with a task in flight; its nanny restarts it
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        assert "8 rendered" in stderr, stderr
        t0 = time.monotonic()
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        now = client.run(os.getpid)
        assert victim not in now.values() and len(now) == 2  # the killed worker was replaced by its nanny
        client.close()
    finally:
        cluster.close()
    outs = sorted(out.glob("*.jpg"))
    assert len(outs) == 8
    from PIL import Image

    for o in outs:
        with Image.open(o) as im:
            im.load()
    done = [r for r in _manifest(out) if r["event"] == "done"]
    assert len(done) == 8 and all(r["status"] == "ok" for r in done)
    assert len({r["output"] for r in done}) == 8
    assert all(r["model"].startswith("tiny.pt:") for r in done)  # the workers used the client's model
    assert not [x for x in out.rglob("*") if ".campipe-tmp-" in x.name]


def test_own_output_lost_only_for_outputs_that_appeared_during_the_run():
    from campipe.batch import FileResult
    from campipe.batch_dask import own_output_lost

    exists = FileResult("a.dng", None, "failed", "a.jpg: exists (use --overwrite to replace it)", 0.0, [],
                        "OutputExistsError")
    other = FileResult("a.dng", None, "failed", "a.dng: truncated", 0.0, [], "DecodeError")
    ok = FileResult("a.dng", "a.jpg", "ok", None, 0.0, [], None)
    assert own_output_lost(exists, fresh=True)
    assert not own_output_lost(exists, fresh=False)  # the file was there before: the user's, kept
    assert not own_output_lost(other, fresh=True) and not own_output_lost(ok, fresh=True)


def test_dask_task_finding_its_own_lost_output_renders_again(tmp_path, tiny_weights, monkeypatch):
    # A re-run task (its first attempt wrote the output, then its worker died before the result was gathered) is
    # simulated deterministically: the "preexist" fault creates the output before the task renders. The client
    # sees OutputExistsError for an output that did not exist at submission and submits the file again with
    # overwrite; an output that existed before the batch is never replaced.
    distributed = pytest.importorskip("distributed")
    from campipe.api import build
    from campipe.batch import BatchLedger, Manifest, model_spec, run_batch_dask

    src = _card(tmp_path / "card", 0, names=["img0.dng", "img1.dng"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1_standard.jpg").write_bytes(b"the user's file")
    monkeypatch.setenv("CAMPIPE_TEST_FAULT", "preexist:img")
    jobs = [RenderJob(str(src / f"img{i}.dng"), str(out / f"img{i}_standard.jpg")) for i in range(2)]
    sets = ["segment.runtime=torch", f"segment.weights={tiny_weights}"]
    ledger = BatchLedger(Manifest(out).load(), "s", "m")
    todo, _ = ledger.plan(jobs)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as cluster:
        res = run_batch_dask(todo, "standard", sets, [], cluster.scheduler_address, ledger=ledger,
                             model=model_spec(build("standard", sets, [])))
    by = {Path(r.input).name: r for r in res}
    assert len(res) == 2
    assert by["img0.dng"].status == "ok" and by["img0.dng"].attempts == 2, by["img0.dng"]
    from PIL import Image

    with Image.open(out / "img0_standard.jpg") as im:
        im.load()  # the placeholder was replaced by a real render
    assert by["img1.dng"].status == "failed" and by["img1.dng"].error_type == "OutputExistsError"
    assert (out / "img1_standard.jpg").read_bytes() == b"the user's file"
    starts = [r["attempt"] for r in _manifest(out)
              if r["event"] == "start" and r["output"].endswith("img0_standard.jpg")]
    assert starts == [1, 2]
