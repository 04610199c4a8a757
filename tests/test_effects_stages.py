"""The registered effect stages: registration (requires/params), function == stage, missing masks, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from campipe.effects.bokeh import portrait_blur
from campipe.effects.denoise import denoise
from campipe.effects.noise import NoiseModel
from campipe.effects.sharpen import sharpen
from campipe.effects.stage_light import stage_light
from campipe.effects.styles import apply_style
from campipe.effects.subject_tone import subject_tone
from campipe.frame import Frame, PersonInstance
from campipe.registry import get_stage

NOISE = {"iso": 1600, "a": 1e-3, "b": 1e-5}


def make_frame(linear_image, with_masks=True, with_person=True):
    h, w = linear_image.shape[:2]
    masks = {}
    persons = []
    person = np.zeros((h, w), np.float32)
    person[10:48, 20:44] = 1.0
    if with_masks:
        sky = np.zeros((h, w), np.float32)
        sky[:8] = 1.0
        skin = np.zeros((h, w), np.float32)
        skin[12:20, 26:38] = 1.0
        hair = np.zeros((h, w), np.float32)
        hair[8:12, 24:40] = 1.0
        teeth = np.zeros((h, w), np.float32)
        teeth[18:19, 30:33] = 1.0
        masks = {"sky": sky, "skin": skin, "hair": hair, "teeth": teeth, "person": person}
    if with_person:
        persons = [PersonInstance(person, 0.9)]
    return Frame(image=linear_image.copy(), masks=masks, persons=persons,
                 meta={"source": "test.dng", "noise": dict(NOISE)})


EXPECTED = {
    "style": ({"tone": 0.0, "warmth": 0.0, "colour": 0.0, "skin_protect": 1.0}, {"linear", "masks"}),
    "denoise": ({"strength": 1.0, "sky_boost": 0.4, "skin_boost": 0.3, "radius": 0}, {"linear", "masks"}),
    "sharpen": ({"amount": 0.5, "radius": 1.0, "noise_floor": 1.0}, {"linear", "masks"}),
    "subject_tone": ({"strength": 1.0, "face_target_L": 55.0, "contrast": 0.0, "max_ev": 2.5},
                     {"linear", "masks", "persons"}),
    "portrait": ({"aperture": 2.8, "focal_length_35mm": 0.0, "focus": -1, "grain": True, "polygon_blades": 0,
                  "max_blur_frac": 0.05}, {"linear", "persons"}),
    "stage_light": ({"focus": -1, "strength": 1.0, "falloff": 0.35, "edge_softness": 0.02}, {"linear", "persons"}),
    "stage_light_mono": ({"focus": -1, "strength": 1.0, "falloff": 0.35, "edge_softness": 0.02,
                          "mono_contrast": 0.5},
                         {"linear", "persons"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_params_and_requirements(name):
    spec = get_stage(name)
    params, requires = EXPECTED[name]
    assert spec.params == params
    assert set(spec.requires) == requires
    assert spec.fn.__module__ == "campipe.effects.stages"


def run(name, frame, **over):
    spec = get_stage(name)
    return spec.fn(frame, **{**spec.params, **over})


def test_style_stage_equals_function(linear_image):
    f = make_frame(linear_image)
    exp = apply_style(linear_image, f.masks["skin"], tone=0.2, warmth=0.5, colour=0.1)
    np.testing.assert_allclose(run("style", f, tone=0.2, warmth=0.5, colour=0.1).image, exp, atol=0)


def test_denoise_stage_equals_function_and_records_model(linear_image):
    f = make_frame(linear_image)
    exp = denoise(linear_image, NoiseModel(1e-3, 1e-5), f.masks["sky"], f.masks["skin"], strength=1.0,
                  sky_boost=0.4, skin_boost=0.3)
    out = run("denoise", f)
    np.testing.assert_allclose(out.image, exp, atol=0)
    assert out.meta["noise_model"] == {"a": 1e-3, "b": 1e-5, "source": "metadata"}


def test_denoise_stage_estimates_noise_without_metadata(linear_image):
    f = make_frame(linear_image)
    f.meta["noise"] = {"iso": 1600}
    out = run("denoise", f)
    assert out.meta["noise_model"]["source"].startswith("estimated")


def test_sharpen_stage_equals_function(linear_image):
    f = make_frame(linear_image)
    exp = sharpen(linear_image, f.masks["sky"], f.masks["skin"], f.masks["teeth"], amount=0.5, radius=1.0,
                  noise=NoiseModel(1e-3, 1e-5), noise_floor=1.0)
    np.testing.assert_allclose(run("sharpen", f).image, exp, atol=0)


def test_subject_tone_stage_equals_function(linear_image):
    f = make_frame(linear_image)
    f.meta["baseline_exposure"] = 0.5
    exp = subject_tone(linear_image, [f.persons[0].mask], f.masks["skin"], f.masks["sky"], exposure_ev=0.5)
    np.testing.assert_allclose(run("subject_tone", f).image, exp, atol=0)


def test_portrait_stage_equals_function(linear_image):
    f = make_frame(linear_image)
    f.meta["focal_length_35mm"] = 50.0
    exp = portrait_blur(linear_image, [f.persons[0].mask], aperture=1.4, focal_length_35mm=50.0,
                        hair=f.masks["hair"], noise=NoiseModel(1e-3, 1e-5))
    np.testing.assert_allclose(run("portrait", f, aperture=1.4).image, exp, atol=0)


def test_portrait_grain_matches_residual_noise_after_denoise(linear_image):
    from campipe.effects.noise import estimate_noise_model

    f = make_frame(linear_image)
    f = run("denoise", f)
    assert f.meta["denoised"] is True
    den = f.image.copy()
    exp = portrait_blur(den, [f.persons[0].mask], aperture=1.4, focal_length_35mm=26.0, hair=f.masks["hair"],
                        noise=estimate_noise_model(den))
    np.testing.assert_allclose(run("portrait", f, aperture=1.4).image, exp, atol=0)


def test_sharpen_coring_uses_current_noise_after_tone_curve(linear_image):
    from campipe.effects.noise import estimate_noise_model

    f = make_frame(linear_image)
    f.meta["display_linear"] = True
    exp = sharpen(linear_image, f.masks["sky"], f.masks["skin"], f.masks["teeth"], amount=0.5, radius=1.0,
                  noise=estimate_noise_model(linear_image), noise_floor=1.0)
    np.testing.assert_allclose(run("sharpen", f).image, exp, atol=0)


@pytest.mark.parametrize("name,mono", [("stage_light", False), ("stage_light_mono", True)])
def test_stage_light_stages_equal_function(linear_image, name, mono):
    f = make_frame(linear_image)
    kw = {"mono": True, "mono_contrast": 0.5} if mono else {}
    exp = stage_light(linear_image, [f.persons[0].mask], f.masks["hair"], strength=1.0, falloff=0.35,
                      edge_softness=0.02, **kw)
    np.testing.assert_allclose(run(name, f).image, exp, atol=0)


@pytest.mark.parametrize("name", ["portrait", "stage_light", "stage_light_mono"])
def test_person_stages_without_persons_raise_clear_error(linear_image, name):
    f = make_frame(linear_image, with_masks=False, with_person=False)
    with pytest.raises(ValueError, match="needs a detected person; none found in test.dng"):
        run(name, f)


def test_portrait_error_message_matches_contract(linear_image):
    f = make_frame(linear_image, with_masks=False, with_person=False)
    with pytest.raises(ValueError, match=r"^portrait mode needs a detected person; none found in test\.dng$"):
        run("portrait", f)


@pytest.mark.parametrize("name", ["style", "subject_tone"])
def test_missing_masks_leave_mask_driven_effects_off(linear_image, name):
    """No segmentation (empty masks, no persons): subject_tone is the identity; style has no skin protection."""
    f = make_frame(linear_image, with_masks=False, with_person=False)
    out = run(name, f, **({"warmth": 0.3} if name == "style" else {}))
    exp = apply_style(linear_image, None, warmth=0.3) if name == "style" else linear_image
    np.testing.assert_allclose(out.image, exp, atol=0)


@pytest.mark.parametrize("name,over", [("style", {}), ("denoise", {"strength": 0.0}), ("sharpen", {"amount": 0.0}),
                                       ("subject_tone", {"strength": 0.0}), ("stage_light", {"strength": 0.0})])
def test_identity_parameters_leave_frame_unchanged(linear_image, name, over):
    f = make_frame(linear_image)
    np.testing.assert_allclose(run(name, f, **over).image, linear_image, atol=0)


@pytest.mark.parametrize("style", ["standard", "warm", "cool", "vibrant", "rich-contrast"])
def test_presets_build_with_effect_stages(style):
    """The built-in presets' style/denoise/sharpen/subject_tone tables are accepted, with --portrait or stage light."""
    from campipe.presets import load_preset

    preset = load_preset(style)
    for extra in (["portrait"], ["stage_light"], ["stage_light_mono"]):
        names = preset.build(extra_stages=extra).names
        assert names.index(extra[0]) == names.index("tone") - 1
