"""Graph cache: a second Segmenter on the same weights runs ONNX Runtime from the cached graph without PyTorch,
with the same outputs; damaged or foreign cache metadata falls back to the checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from test_segmentation_helpers import tiny_checkpoint

pytest.importorskip("onnxruntime")


def _image():
    return (np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)


def test_second_load_uses_cached_graph_without_torch(tmp_path, monkeypatch):
    from campipe.segmentation.graph_cache import meta_path, read_meta
    from campipe.segmentation.inference import Segmenter

    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "tiny.pt")
    first = Segmenter(ck, runtime="onnx", threads=1, dedup_iou=1.0, score_threshold=0.0)
    assert first.model is not None and first.runner.name == "onnx"
    m = read_meta(first.meta["sha256"])
    assert m is not None and m["dec_layers"] == first.dec_layers and m["classes"] == list(first.classes)
    ref = first(_image())
    np.save(tmp_path / "img.npy", _image())
    code = f"""
import sys, numpy as np
from campipe.segmentation.inference import Segmenter
s = Segmenter({str(ck)!r}, runtime="onnx", threads=1, dedup_iou=1.0, score_threshold=0.0)
r = s(np.load({str(tmp_path / 'img.npy')!r}))
np.savez({str(tmp_path / 'out.npz')!r}, torch=np.array('torch' in sys.modules), model_none=np.array(s.model is None),
         **{{k: v for k, v in r.masks.items()}}, scores=np.array([p.score for p in r.persons]))
"""
    env = {**__import__("os").environ, "CAMPIPE_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    out = np.load(tmp_path / "out.npz")
    assert not bool(out["torch"]) and bool(out["model_none"])
    for k, v in ref.masks.items():
        np.testing.assert_allclose(out[k], v, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(out["scores"], [p.score for p in ref.persons], atol=1e-5)
    assert meta_path(first.meta["sha256"]).is_file()


def test_damaged_or_foreign_meta_falls_back_to_checkpoint(tmp_path, monkeypatch):
    from campipe.segmentation.graph_cache import meta_path, read_meta, write_meta
    from campipe.segmentation.inference import Segmenter

    monkeypatch.setenv("CAMPIPE_CACHE", str(tmp_path / "cache"))
    ck = tiny_checkpoint(tmp_path / "tiny.pt")
    sha = Segmenter(ck, runtime="onnx", threads=1).meta["sha256"]
    p = meta_path(sha)
    p.write_text("{not json")
    assert read_meta(sha) is None
    s = Segmenter(ck, runtime="onnx", threads=1)           # checkpoint path again, and the entry is rewritten
    assert s.model is not None and read_meta(sha) is not None
    doc = json.loads(p.read_text())
    write_meta("0" * 64, {k: doc[k] for k in ("dec_layers", "config", "classes", "normalization")})
    p.write_text(meta_path("0" * 64).read_text())          # an entry recording another file's hash
    assert read_meta(sha) is None
    assert Segmenter(ck, runtime="onnx", threads=1).model is not None
    # torch runtime and pruning overrides never take the torch-free path
    assert Segmenter(ck, runtime="torch").model is not None
