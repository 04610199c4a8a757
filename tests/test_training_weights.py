"""The shipped HyperDETR weights: format, size, int8 + 2 decoder layers, and non-trivial masks on samples/.

The samples are scikit-image's astronaut (a person filling most of the frame: face, hair, suit) and rocket (a launch
against a large sky) rendered through campipe's own RAW path. Figures are fractions of the frame; the expected
regions are coarse hand-made boxes of these well-known photos.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "segmentation" / "weights" / "hyperdetr.pt"
SAMPLES = REPO / "samples"


def test_shipped_weights_format_and_size():
    from campipe.segmentation.checkpoint import load_checkpoint, read_checkpoint

    assert WEIGHTS.is_file(), f"shipped weights missing at {WEIGHTS}"
    assert WEIGHTS.stat().st_size <= 12 * 1024 * 1024
    ck = read_checkpoint(WEIGHTS)
    assert ck["quantized"] is True
    assert ck["config"]["keep_dec_layers"] == 2
    assert ck["classes"] == ["sky", "person", "hair", "skin", "teeth", "glasses"]
    model, meta = load_checkpoint(WEIGHTS)
    assert model.num_dec_layers == 2
    assert "celebamask/iou_skin" in meta["metrics"]  # validation figures travel with the weights


@functools.lru_cache(maxsize=None)
def _masks(name: str):
    """Segmentation of one sample with the shipped weights, computed once per session (the tests only read it)."""
    from campipe.decode import decode_file
    from campipe.segment_stage import frame_render
    from campipe.segmentation.inference import Segmenter

    frame = decode_file(SAMPLES / name)
    rgb = frame_render(frame)[0]
    seg = Segmenter(WEIGHTS, runtime="torch", refine="bilinear")
    return seg(rgb)


@pytest.mark.slow
def test_astronaut_has_person_and_skin():
    res = _masks("astronaut_5d4_iso200.dng")
    h, w = res.size
    person, skin, sky = res.masks["person"], res.masks["skin"], res.masks["sky"]
    # the orange suit fills rows 0.45-0.95, columns 0.1-0.45; the face is at rows 0.15-0.33, columns 0.33-0.5
    assert person[int(0.45 * h):int(0.95 * h), int(0.1 * w):int(0.45 * w)].mean() > 0.5
    assert skin[int(0.15 * h):int(0.33 * h), int(0.33 * w):int(0.5 * w)].mean() > 0.3
    assert sky.mean() < 0.2
    assert len(res.persons) >= 1


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="shipped weights (recipe v10, see MODEL_CARD.md) miss the dusk "
                   "sky of the rocket sample (sky 0.00; v6 to v9 the same) and call much of it person (mean 0.45; v5 "
                   "0.36, 0.72 with the render used before 2026-12-05); issue 4 stays open")
def test_rocket_has_sky():
    res = _masks("rocket_a7m3_iso800.dng")
    h, w = res.size
    sky, person = res.masks["sky"], res.masks["person"]
    # the top quarter between the launch towers (columns 0.25-0.75) is open (dusk) sky
    assert sky[: h // 4, w // 4: 3 * w // 4].mean() > 0.5
    assert person.mean() < 0.1


@pytest.mark.slow
def test_astronaut_person_mask_is_non_trivial():
    """What the shipped weights do get right on the samples: the astronaut's suit is person, with an instance."""
    res = _masks("astronaut_5d4_iso200.dng")
    h, w = res.size
    person = res.masks["person"]
    assert person[int(0.45 * h):int(0.95 * h), int(0.1 * w):int(0.45 * w)].mean() > 0.5
    assert 0.2 < person.mean() < 0.95
    assert len(res.persons) >= 1 and res.persons[0].mask[int(0.5 * h):, : w // 2].mean() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut_5d4_iso200.dng", "astronaut_d850_iso3200_tungsten.dng"])
def test_single_person_samples_get_one_instance(name):
    """One person in the frame, one person instance: a half-length portrait split into head and body would be exposed
    apart by per-subject tone mapping (a candidate that did this was not shipped: MODEL_CARD.md, seventh session)."""
    res = _masks(name)
    assert len(res.persons) == 1, [round(p.score, 3) for p in res.persons]
