"""ONNX export matches eager PyTorch; runtime choice and fallback; the export cache keyed by the weights hash."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from campipe.segmentation.checkpoint import load_checkpoint
from campipe.segmentation.export import cached_onnx_path, export_onnx
from campipe.segmentation.graph_cache import STALE_FP32_VARIANTS
from campipe.segmentation.runtime import OrtRunner, TorchRunner, make_runner
from test_segmentation_helpers import assert_onnx_matches_eager, calibrated_model, tiny_checkpoint, tiny_config

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("scene_only", [False, True])
def test_onnx_matches_eager(tmp_path, scene_only):
    m = calibrated_model(tiny_config(keep_dec_layers=2))
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x, scene_only=scene_only)
    p = export_onnx(m, tmp_path / "m.onnx", scene_only=scene_only)
    with torch.no_grad():  # exporting must not change the caller's model
        again = m(x, scene_only=scene_only)
    assert torch.equal(ref["sem_logits"], again["sem_logits"])
    out = OrtRunner(p, threads=1)(x.numpy())
    keys = ["sem_logits"] if scene_only else ["sem_logits", "pred_logits", "pred_masks"]
    assert sorted(out) == sorted(keys)
    for k in keys:
        np.testing.assert_allclose(out[k], ref[k].numpy(), atol=1e-4, rtol=1e-4, err_msg=k)


def _input_dims(path):
    import onnx

    m = onnx.load(str(path))
    return [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]


def test_export_is_static_batch_one_unless_dynamic_asked(tmp_path):
    m = calibrated_model(tiny_config(keep_dec_layers=2))
    static = export_onnx(m, tmp_path / "s.onnx")
    dyn = export_onnx(m, tmp_path / "d.onnx", dynamic_batch=True)
    assert _input_dims(static) == [1, 3, 64, 96]
    assert _input_dims(dyn) == ["batch", 3, 64, 96]
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m(x)
    out = OrtRunner(dyn, threads=1)(x.numpy())  # the dynamic graph takes a batch of 2
    np.testing.assert_allclose(out["pred_masks"], ref["pred_masks"].numpy(), atol=1e-4, rtol=1e-4)
    one = OrtRunner(static, threads=1)(x[:1].numpy())
    np.testing.assert_allclose(one["pred_masks"], out["pred_masks"][:1], atol=1e-4, rtol=1e-4)


def test_auto_runtime_uses_cached_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "t.pt")
    model, meta = load_checkpoint(ck, keep_dec_layers=2)
    r = make_runner(model, meta["sha256"], "auto")
    assert isinstance(r, OrtRunner)
    cached = cached_onnx_path(meta["sha256"], 2)
    assert cached.is_file() and str(tmp_path / "cache") in str(cached)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    ref = TorchRunner(model)(x)
    out = r(x)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], atol=1e-4, rtol=1e-4)
    mtime = cached.stat().st_mtime_ns
    make_runner(model, meta["sha256"], "onnx")  # second use: no re-export
    assert cached.stat().st_mtime_ns == mtime


def test_export_replaces_graphs_of_older_versions(tmp_path, monkeypatch):
    """A cache written by an older campipe (other variant names) gets the current graph, and the old ones go."""
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "t.pt")
    model, meta = load_checkpoint(ck, keep_dec_layers=2)
    sha = meta["sha256"]
    old = [cached_onnx_path(sha, 2, v) for v in STALE_FP32_VARIANTS]
    other = cached_onnx_path("f" * 64, 2, "fp32-b1")  # another weights file's graph is not ours to remove
    for p in old + [other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"old graph")
    r = make_runner(model, sha, "onnx")
    assert isinstance(r, OrtRunner) and cached_onnx_path(sha, 2).is_file()
    assert not any(p.exists() for p in old)
    assert other.read_bytes() == b"old graph"


def test_fallback_to_torch_without_onnxruntime(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    m = calibrated_model(tiny_config())
    r = make_runner(m, "0" * 64, "auto")
    assert isinstance(r, TorchRunner)
    assert "onnxruntime is not installed" in caplog.text
    with pytest.raises(RuntimeError, match="needs the onnxruntime package"):
        make_runner(m, "0" * 64, "onnx")


def test_int8_sidecar_is_used_only_when_it_matches(tmp_path, monkeypatch, caplog):
    from campipe.segmentation.export import (get_or_export, int8_sidecar_path, onnx_weights_sha256,
                                             quantize_onnx_int8, weights_key)

    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "w.pt")
    model, meta = load_checkpoint(ck)
    with pytest.raises(RuntimeError, match="calibrated int8 graph matching"):
        make_runner(model, meta["sha256"], "onnx-int8", weights_file=ck)
    fp32 = get_or_export(model, meta["sha256"])
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 64, 96)).astype(np.float32) for _ in range(2)]
    side = quantize_onnx_int8(fp32, int8_sidecar_path(ck), calib, weights_sha256=weights_key(meta["sha256"], 6),
                              method="minmax")
    assert side.name == "w.int8.onnx" and onnx_weights_sha256(side) == weights_key(meta["sha256"], 6)
    assert make_runner(model, meta["sha256"], "auto", weights_file=ck).name == "onnx"  # int8 is opt-in
    r = make_runner(model, meta["sha256"], "onnx-int8", weights_file=ck)
    assert r.name == "onnx-int8"
    out = r(calib[0])
    assert out["pred_masks"].shape == (1, 4, 64, 96) and np.isfinite(out["sem_logits"]).all()
    # pruned model: decoder depth differs -> sidecar not used
    pruned, _ = load_checkpoint(ck, keep_dec_layers=2)
    with pytest.raises(RuntimeError, match="matching the weights"):
        make_runner(pruned, meta["sha256"], "onnx-int8", weights_file=ck)
    assert "does not match the loaded weights" in caplog.text
    with pytest.raises(ValueError, match="calibration image"):
        quantize_onnx_int8(fp32, tmp_path / "x.onnx", [])


def test_fold_batchnorm_preserves_outputs_and_original():
    from campipe.segmentation.runtime import fold_batchnorm

    m = calibrated_model(tiny_config())
    for mod in m.modules():  # non-trivial statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.bias.data.normal_(0, 0.1)
    f = fold_batchnorm(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = m(x), f(x)
    for k in ("sem_logits", "pred_logits", "pred_masks"):
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k


def test_default_threads(monkeypatch):
    import os

    from campipe.segmentation import runtime

    monkeypatch.setenv("CAMPIPE_THREADS", "3")
    assert runtime.default_threads() == 3
    monkeypatch.setenv("CAMPIPE_THREADS", "many")
    with pytest.raises(ValueError, match="CAMPIPE_THREADS"):
        runtime.default_threads()
    monkeypatch.delenv("CAMPIPE_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert runtime.default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert runtime.default_threads() == 2


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_matches_eager_with_coordinate_channels(tmp_path, dynamic):
    """mask_coords: the dynamic convs also read 5 coordinate channels; both export forms (batch-1 Conv, dynamic-batch
    baddbmm) match eager PyTorch."""
    m = calibrated_model(tiny_config(keep_dec_layers=2, mask_coords=True))
    b = 2 if dynamic else 1
    x = torch.randn(b, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(x)
    p = export_onnx(m, tmp_path / "c.onnx", dynamic_batch=dynamic)
    out = OrtRunner(p, threads=1)(x.numpy())
    np.testing.assert_allclose(out["pred_masks"], ref["pred_masks"].numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_matches_eager_with_a_static_branch(tmp_path):
    """model.sem_head_hidden: the residual 3x3 branch of the static channels exports and matches eager PyTorch."""
    m = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.decoder.sem_branch[2].parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    assert_onnx_matches_eager(m, tmp_path / "b.onnx")
