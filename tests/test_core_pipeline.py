"""Frame, stage registry, pipeline building (requirements checked at build time) and presets."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.frame import Frame
from campipe.pipeline import PipelineError, build_pipeline, coerce_param
from campipe.presets import PresetError, available_presets, load_preset
from campipe.registry import get_stage


def test_frame_validates_shape_and_casts_to_float32():
    f = Frame(image=np.zeros((2, 3, 3), dtype=np.float64))
    assert f.image.dtype == np.float32 and (f.height, f.width) == (2, 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        Frame(image=np.zeros((2, 3)))


def test_frame_copy_is_deep():
    f = Frame(image=np.ones((2, 2, 3), np.float32), masks={"sky": np.zeros((2, 2), np.float32)})
    g = f.copy()
    g.image[0, 0, 0] = 5
    g.masks["sky"][0, 0] = 1
    assert f.image[0, 0, 0] == 1 and f.masks["sky"][0, 0] == 0


def test_requirements_are_checked_when_building():
    # 'dither' needs 'display', which only 'output' provides: wrong order fails before any pixel is touched
    with pytest.raises(PipelineError, match="dither.*requires display"):
        build_pipeline(["wb", "dither", "output"])
    p = build_pipeline(["wb", "output", "dither"])
    assert p.names == ["wb", "output", "dither"]


def test_unknown_stage_and_parameter_are_named():
    with pytest.raises(PipelineError, match="unknown stage 'nope'"):
        build_pipeline(["wb", "nope"])
    with pytest.raises(PipelineError, match=r"unknown parameter tone\.foo"):
        build_pipeline(["tone"], {"tone": {"foo": 1}})
    with pytest.raises(PipelineError, match="not in this pipeline"):
        build_pipeline(["wb"], {"tone": {"ev": 1}})


@pytest.mark.parametrize("default,value,expected", [
    (1.0, "2.5", 2.5), (1, "3", 3), (True, "off", False), ("srgb", "display-p3", "display-p3"), (0.0, 2, 2.0),
])
def test_coerce_param(default, value, expected):
    assert coerce_param("s", "k", default, value) == expected


@pytest.mark.parametrize("default,value", [(1.0, "abc"), (1, "2.5"), (True, "maybe"), (1.0, True)])
def test_coerce_param_errors_name_the_key(default, value):
    with pytest.raises(PipelineError, match=r"s\.k: expected"):
        coerce_param("s", "k", default, value)


def test_builtin_presets_load_and_extend_standard():
    names = available_presets()
    for required in ("standard", "warm", "cool", "vibrant", "rich-contrast"):
        assert required in names
    std = load_preset("standard")
    warm = load_preset("warm")
    assert warm.stages == std.stages
    assert warm.params["style"]["warmth"] > 0 > load_preset("cool").params["style"]["warmth"]
    assert all(load_preset(n).description for n in names)


def test_preset_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('stages = ["wb", "tone", "output"]\n[tone]\nev = "bright"\n')
    with pytest.raises(PresetError, match=r"bad\.toml: .*tone\.ev: expected float"):
        load_preset(bad)
    bad.write_text('stages = ["wb", "tone"\n')
    with pytest.raises(PresetError, match=r"bad\.toml: invalid TOML"):
        load_preset(bad)
    bad.write_text('description = 3\nstages = ["wb"]\n')
    with pytest.raises(PresetError, match="description"):
        load_preset(bad)
    bad.write_text('stages = ["wb"]\ntone = 3\n')
    with pytest.raises(PresetError, match="tone: expected a table"):
        load_preset(bad)
    cyc = tmp_path / "cyc.toml"
    cyc.write_text(f'extends = "{cyc}"\n')
    with pytest.raises(PresetError, match="cycle"):
        load_preset(cyc)
    with pytest.raises(PresetError, match="unknown style 'nonexistent'"):
        load_preset("nonexistent")


def test_set_overrides_are_validated(tmp_path):
    p = load_preset("basic")
    pipe = p.build(["tone.ev=0.5", "wb.temperature=5200"])
    assert pipe.settings["tone"]["ev"] == 0.5 and pipe.settings["wb"]["temperature"] == 5200.0
    with pytest.raises(PresetError, match="expected stage.param=value"):
        p.build(["toneev=1"])
    with pytest.raises(PresetError, match="stage 'style' is not in preset 'basic'"):
        p.build(["style.warmth=1"])
    with pytest.raises(PresetError, match=r"tone\.ev: expected float"):
        p.build(["tone.ev=high"])


def test_stage_timings_and_hook(linear_image):
    pipe = build_pipeline(["wb", "tone", "output"])
    seen = []
    out = pipe.run(Frame(image=linear_image.copy()), on_stage=lambda n, f, s: seen.append(n))
    assert seen == ["wb", "tone", "output"]
    assert set(out.timings) == {"wb", "tone", "output"} and all(v >= 0 for v in out.timings.values())
    assert out.display is not None and out.display.dtype == np.float32
    assert get_stage("tone").params["curve"] == "filmic"
