"""The training loop end to end on a tiny generated data set: phases, checkpoints, exports, logs, resume after an
interruption (bit-identical to an uninterrupted run), device / autocast / loader-thread selection, the prefetcher."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from campipe.segmentation.checkpoint import load_checkpoint, read_checkpoint
from campipe.segmentation.training import train as T
from campipe.segmentation.training.batches import Prefetcher, batch_to
from test_segmentation_helpers import TINY, write_tiny_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """CelebAMask-, CamVid- and Penn-Fudan-like images (96x96) with labels in each set's own id scheme."""
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def _cfg(data, out, **train) -> T.TrainConfig:
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    return T.TrainConfig.from_dict({
        "model": {**model, "input_size": [64, 96]},
        "data": {"dir": str(data), "cache_dir": None, "sampler": {
            "set_weights": {"celebamask": 1.0, "camvid": 1.0, "pennfudan": 1.0}, "synth_fraction": 0.3}},
        "train": {"out_dir": str(out), "seed": 3, "threads": 1, "device": "cpu", "val_every_min": 0,
                  "val_limit": 2, "log_every": 1, "sets": ["celebamask", "camvid", "pennfudan"], **train},
        "phase": [{"name": "low", "input_hw": [64, 64], "batch_size": 2, "lr": 1e-3, "steps": 3, "warmup_steps": 1},
                  {"name": "full", "input_hw": [64, 96], "batch_size": 2, "lr": 2e-4, "steps": 2,
                   "warmup_steps": 1}],
    })


def _state(path):
    return read_checkpoint(path)["state_dict"]


def test_train_runs_phases_exports_and_resumes_identically(tiny_data, tmp_path):
    a = T.train(_cfg(tiny_data, tmp_path / "a"), progress=False, log_fn=lambda m: None)
    assert not a["interrupted"] and a["state"]["global_step"] == 5
    for f in ("last.pt", "ema_float.pt", "ema_int8_l2.pt", "log.jsonl"):
        assert (tmp_path / "a" / f).is_file(), f
    logs = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if r["kind"] == "train"]
    assert [r["gstep"] for r in train_logs] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) for r in train_logs)
    val = [r for r in logs if r["kind"] == "val"][-1]["results"]
    assert set(val) == {"celebamask", "camvid", "pennfudan"} and val["celebamask"]["n_images"] == 2
    m, meta = load_checkpoint(tmp_path / "a" / "ema_int8_l2.pt")   # what ships: int8, 2 decoder layers
    assert meta["quantized"] and len(m.transformer.decoder) == 2

    # interrupted (SIGTERM) during phase 0, then resumed: same weights as the uninterrupted run
    seen = []

    def stop_at_step_2(msg):
        seen.append(msg)
        if "p0 step 2 " in msg:
            os.kill(os.getpid(), signal.SIGTERM)

    b1 = T.train(_cfg(tiny_data, tmp_path / "b"), progress=False, log_fn=stop_at_step_2)
    assert b1["interrupted"] and b1["state"]["global_step"] == 2
    assert not (tmp_path / "b" / "ema_float.pt").exists()
    # the EMA of the cut run can be exported as it stands (what starts a follow-up run or a cut device run)
    f32, q8 = T.export_last(tmp_path / "b")
    _, meta_b = load_checkpoint(f32)
    assert meta_b["extra"]["partial"]["global_step"] == 2 and q8.is_file()
    ema = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)["ema"]
    exported = _state(f32)
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        T.export_last(tmp_path / "nothing")
    b2 = T.train(_cfg(tiny_data, tmp_path / "b"), progress=False, log_fn=seen.append)
    assert any("resumed from" in s for s in seen)
    assert not b2["interrupted"] and b2["state"]["global_step"] == 5
    sa, sb = _state(tmp_path / "a" / "ema_float.pt"), _state(tmp_path / "b" / "ema_float.pt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_trainable_prefixes_leave_the_frozen_parts_bit_identical(tiny_data, tmp_path):
    """train.trainable = transformer + queries + head: after init_from, the conv path (backbone, decoder, their
    BatchNorm statistics) is exported unchanged, while the trained parts move; an unknown prefix is an error."""
    T.train(_cfg(tiny_data, tmp_path / "a"), progress=False, log_fn=lambda m: None)
    init = tmp_path / "a" / "ema_float.pt"
    seen = []
    T.train(_cfg(tiny_data, tmp_path / "b", init_from=str(init), trainable=["transformer", "query_embed", "head"]),
            progress=False, log_fn=seen.append)
    assert any("training only transformer, query_embed, head" in m for m in seen)
    before, after = _state(init), _state(tmp_path / "b" / "ema_float.pt")
    frozen = [k for k in before if k.startswith(("backbone.", "decoder.", "input_proj."))]
    trained = [k for k in before if k.startswith(("transformer.", "head.")) and before[k].is_floating_point()]
    assert any("running_mean" in k for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert sum(not torch.equal(before[k], after[k]) for k in trained) > len(trained) // 2
    model = T.build_model(T.training_model_config(_cfg(tiny_data, tmp_path).model))
    with pytest.raises(ValueError, match="no parameter under 'transformr'"):
        T.freeze_except(model, ["transformr"])
    assert T.freeze_except(model, []) == sum(p.numel() for p in model.parameters())


def test_train_bf16_autocast_on_cpu_runs(tiny_data, tmp_path):
    seen = []
    s = T.train(_cfg(tiny_data, tmp_path, amp="bf16", loader_workers=2), progress=False, log_fn=seen.append)
    assert s["state"]["global_step"] == 5
    assert any("bf16 autocast, 2 loader thread(s)" in m for m in seen)
    sd = _state(tmp_path / "ema_float.pt")
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())  # exports stay float32


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert T.resolve_device("auto") == torch.device("cpu")
    assert T.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        T.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device|not supported"):
        T.resolve_device("tpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert T.resolve_device("auto") == torch.device("cuda")
    assert T.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 GPU"):
        T.resolve_device("cuda:3")


def test_resolve_amp_and_loader_workers():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert T.resolve_amp("auto", cpu) is None and T.resolve_amp("auto", gpu) is torch.bfloat16
    assert T.resolve_amp("bf16", cpu) is torch.bfloat16 and T.resolve_amp("off", gpu) is None
    with pytest.raises(ValueError, match="amp"):
        T.resolve_amp("fp8", gpu)
    assert T.resolve_loader_workers(0, cpu) == 1 and T.resolve_loader_workers(3, cpu) == 3
    assert 1 <= T.resolve_loader_workers(0, gpu) <= 8
    with pytest.raises(ValueError):
        T.resolve_loader_workers(-1, cpu)
    with pytest.raises(ValueError, match="unknown keys"):
        T.TrainConfig.from_dict({"train": {"devise": "cuda"}, "phase": [{"steps": 1}]})


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="training config not found"):
        T.TrainConfig.from_toml(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("oops = [\n")
    with pytest.raises(ValueError, match=r"bad\.toml: invalid TOML"):
        T.TrainConfig.from_toml(bad)


def test_prefetcher_order_is_independent_of_workers_and_errors_surface_at_their_step():
    def make(step):
        if step == 7:
            raise RuntimeError("bad sample at 7")
        rng = np.random.default_rng(step)
        return {"x": torch.from_numpy(rng.random(4))}

    got = {}
    for w in (1, 3):
        pf = Prefetcher(make, 2, workers=w)
        got[w] = [pf.get() for _ in range(5)]   # steps 2..6
        with pytest.raises(RuntimeError, match="bad sample at 7"):
            pf.get()
        pf.close()
    assert [s for s, _ in got[1]] == [s for s, _ in got[3]] == [2, 3, 4, 5, 6]
    for (_, b1), (_, b3) in zip(got[1], got[3]):
        assert torch.equal(b1["x"], b3["x"])


def test_batch_to_moves_every_tensor():
    b = {"image": torch.zeros(2, 3, 4, 4), "instances": [torch.zeros(1, 4, 4), torch.zeros(0, 4, 4)],
         "inst_known": torch.tensor([True, False]), "note": "x"}
    m = batch_to(b, torch.device("meta"))
    assert m["image"].is_meta and all(t.is_meta for t in m["instances"]) and m["inst_known"].is_meta
    assert m["note"] == "x" and m["instances"][1].shape == (0, 4, 4)


def _proc_make(step):  # module level: inherited by the forked loader processes
    if step == 6:
        raise RuntimeError("bad sample at 6")
    rng = np.random.default_rng(step)
    return {"x": torch.from_numpy(rng.random(4)), "l": [torch.from_numpy(rng.random(2))]}


def test_process_prefetcher_gives_the_thread_stream_and_surfaces_errors():
    th = Prefetcher(_proc_make, 2, workers=1)
    want = [th.get() for _ in range(4)]  # steps 2..5
    th.close()
    pf = Prefetcher(_proc_make, 2, processes=2)
    got = [pf.get() for _ in range(4)]
    with pytest.raises(RuntimeError, match="bad sample at 6"):
        pf.get()
    pf.close()
    assert [s for s, _ in got] == [s for s, _ in want] == [2, 3, 4, 5]
    for (_, a), (_, b) in zip(got, want):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["l"][0], b["l"][0])


def test_refit_rows_reads_every_set_labelling_a_class_and_changes_only_kept_rows(tiny_data, tmp_path):
    """``refit_rows`` end to end on the tiny sets: person is read from CelebAMask, CamVid and Penn-Fudan, skin from
    CelebAMask alone (unknown elsewhere, CamVid's bicyclists/unlabelled unknown for person); with ``--holdout`` the
    output exists exactly when a class was kept, and every other row, and everything outside the read-out, is
    bit-identical to the input."""
    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.training import refit_rows as R
    from test_segmentation_helpers import calibrated_model, tiny_config

    m = calibrated_model(tiny_config(mask_stride=2, sem_head_hidden=8))
    src = save_checkpoint(tmp_path / "in.pt", m, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert R.refit_sets(["skin"]) == ["celebamask"]
    assert R.refit_sets(["person", "skin"]) == ["celebamask", "camvid", "pennfudan"]
    xs, ys, ks = R.collect(m, tiny_data, "camvid", ["person", "skin"], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           ["s000"])
    assert xs[0].dtype == torch.float16 and ys[0].shape == ks[0].shape == (2,) + xs[0].shape[1:]
    assert ks[0][0].all() and not ks[0][1].any()  # person known (no bicyclist here), skin unknown on CamVid
    assert ys[0][0].max() > 0.5  # the pedestrian
    out = tmp_path / "out.pt"
    rc = R.main(["--float", str(src), "--data", str(tiny_data), "--classes", "person,skin", "--holdout", "50",
                 "--epochs", "40", "--lr", "0.05", "--out", str(out)])
    assert rc == 0 and out.exists()
    got, meta = load_checkpoint(out)
    rep = meta["extra"]["refit_rows"]
    assert set(rep["sets"]) == {"celebamask", "camvid", "pennfudan"} and "skin" in rep["kept"]
    assert rep["holdout"]["skin"]["refit"]["iou"] > rep["holdout"]["skin"]["current"]["iou"]
    names = list(m.cfg.semantic_classes)
    changed = {names.index(c) for c in rep["kept"]}
    a, b = m.state_dict(), got.state_dict()
    for k in a:
        if k in ("decoder.sem_head.weight", "decoder.sem_head.bias", "decoder.sem_branch.2.weight",
                 "decoder.sem_branch.2.bias"):
            assert not torch.equal(a[k][names.index("skin")], b[k][names.index("skin")]) or k.endswith("head.bias")
            for i in set(range(len(names))) - changed:
                assert torch.equal(a[k][i], b[k][i]), (k, i)
        else:
            assert torch.equal(a[k], b[k]), k


def test_refit_fit_ignores_unknown_pixels():
    """Labels contradicting the features only where they are unknown leave the fit where the known pixels lead."""
    from campipe.segmentation.training.refit_rows import fit_rows, pooled_ious

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 16, generator=g)
    target = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    y = (torch.einsum("kc,chw->khw", target, x) > 0).float()
    known = torch.ones_like(y, dtype=torch.bool)
    known[:, :, :8] = False
    y_bad = y.clone()
    y_bad[:, :, :8] = 1 - y_bad[:, :, :8]  # wrong, but unknown
    w0, b0 = torch.zeros(1, 4), torch.zeros(1)
    w, b = fit_rows(w0, b0, [x], [y_bad], epochs=200, lr=5e-2, batch=1, ks=[known])
    assert pooled_ious(w, b, [x], [y])[0] > 0.9  # right on every pixel, the unknown ones included
    w2, b2 = fit_rows(w0, b0, [x], [y_bad], epochs=200, lr=5e-2, batch=1)  # all known: pulled by the wrong half
    assert pooled_ious(w2, b2, [x], [y])[0] < 0.8


def test_every_committed_training_config_reads():
    """Each ``segmentation/configs/*.toml`` (the recipes the model card's rules name) parses into a training config
    and a model config, so a recipe is not found broken only when its run starts."""
    from pathlib import Path

    from campipe.segmentation.training import train as T

    files = sorted((Path(__file__).resolve().parents[1] / "segmentation" / "configs").glob("*.toml"))
    assert len(files) >= 2
    for f in files:
        cfg = T.TrainConfig.from_toml(f)
        assert cfg.phases, f.name
        assert T.training_model_config(cfg.model).input_size, f.name
