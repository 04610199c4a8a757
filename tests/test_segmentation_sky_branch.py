"""The residual sky branch (``model.sky_head_hidden``, :class:`campipe.segmentation.model.SkyBranch`): it starts as
the model without it, writes the sky logit only, survives checkpoints, int8, tiling and ONNX, and its fitting code
learns a sky the frozen logit misses (small generated data)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from campipe.segmentation.checkpoint import load_checkpoint, save_checkpoint
from campipe.segmentation.config import HyperDETRConfig
from campipe.segmentation.model import build_model
from test_segmentation_helpers import assert_onnx_matches_eager, calibrated_model, tiny_config


def _live(m: torch.nn.Module, seed: int = 11, branch: torch.nn.Module | None = None) -> torch.nn.Module:
    """``m`` with random weights in the last conv of ``branch`` (default its sky branch), so the branch acts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (branch if branch is not None else m.decoder.sky_branch).last.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


def _with_branch(plain: torch.nn.Module, hidden: int = 8, stride: int = 1, classes=("sky",)) -> torch.nn.Module:
    cfg = HyperDETRConfig.from_dict({**plain.cfg.to_dict(), "sky_head_hidden": hidden, "sky_head_stride": stride,
                                     "sky_head_classes": classes})
    m = build_model(cfg).eval()
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("decoder.sky_branch.") for k in missing)
    return m


def test_config_validation():
    with pytest.raises(ValueError, match="sky_head_hidden"):
        tiny_config(sky_head_hidden=-1)
    with pytest.raises(ValueError, match="sky_head_stride"):
        tiny_config(sky_head_hidden=4, sky_head_stride=3)
    with pytest.raises(ValueError, match="'sky' class"):
        tiny_config(sky_head_hidden=4, semantic_classes=("person", "hair"))
    for bad in [("skin", "sky"), ("sky", "sky"), ("sky", "fur"), ()]:
        with pytest.raises(ValueError, match="sky_head_classes"):
            tiny_config(sky_head_hidden=4, sky_head_classes=bad)
    assert tiny_config(sky_head_hidden=4, sky_head_classes=["sky", "skin"]).sky_head_classes == ("sky", "skin")
    tiny_config(semantic_classes=("person", "hair"))  # without a branch the default class list is not checked


@pytest.mark.parametrize("mask_stride,sem_branch,stride,classes", [
    (1, 0, 1, ("sky",)), (2, 0, 1, ("sky",)), (2, 8, 1, ("sky",)), (2, 8, 2, ("sky",)),
    (2, 8, 2, ("sky", "skin")), (1, 0, 1, ("sky", "glasses", "person"))])
def test_fresh_branch_is_the_identity_and_a_live_one_writes_only_its_classes(mask_stride, sem_branch, stride,
                                                                            classes):
    plain = calibrated_model(tiny_config(mask_stride=mask_stride, sem_head_hidden=sem_branch))
    m = _with_branch(plain, stride=stride, classes=classes)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    ks = [list(m.cfg.semantic_classes).index(c) for c in classes]
    assert m.decoder.sky_branch.last.out_channels == len(classes)
    with torch.no_grad():
        a, b = plain(x), m(x)
        assert torch.equal(a["sem_logits"], b["sem_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])
        c = _live(m)(x)
        only = m(x, scene_only=True)
    others = [i for i in range(c["sem_logits"].shape[1]) if i not in ks]
    assert torch.equal(c["sem_logits"][:, others], a["sem_logits"][:, others])
    assert torch.equal(c["pred_masks"], a["pred_masks"]) and torch.equal(c["pred_logits"], a["pred_logits"])
    for k in ks:
        assert float((c["sem_logits"][:, k] - a["sem_logits"][:, k]).abs().mean()) > 1e-3
    assert torch.equal(only["sem_logits"], c["sem_logits"])


def test_branch_input_is_the_documented_features():
    m = _with_branch(calibrated_model(tiny_config(mask_stride=2)))
    d = m.decoder
    sem, d2, mf = torch.randn(1, 6, 8, 8), torch.randn(1, m.cfg.decoder_dims[3], 8, 8), torch.randn(1, 16, 8, 8)
    f = d.sky_branch_input(sem, d2, mf)
    assert f.shape[1] == d.sky_branch.in_mean.numel() == m.cfg.decoder_dims[3] + m.cfg.mask_dim + 1
    sky = list(m.cfg.semantic_classes).index("sky")
    assert torch.equal(f[:, -1], sem[:, sky]) and torch.equal(f[:, :d2.shape[1]], d2)
    m2 = _with_branch(calibrated_model(tiny_config(mask_stride=2)), classes=("sky", "teeth"))
    f2 = m2.decoder.sky_branch_input(sem, d2, mf)
    names = list(m2.cfg.semantic_classes)
    assert f2.shape[1] == m2.decoder.sky_branch.in_mean.numel() == f.shape[1] + 1
    assert torch.equal(f2[:, -2], sem[:, names.index("sky")]) and torch.equal(f2[:, -1], sem[:, names.index("teeth")])



@pytest.mark.parametrize("stride,classes", [(1, ("sky",)), (2, ("sky",)), (2, ("sky", "skin"))])
def test_branch_on_channel_groups_equals_the_documented_formula(stride, classes):
    """The branch never concatenates or normalises a copy (:func:`conv_of_concat`); it must equal the formula of
    its docstring: normalise the concatenated input, pool, conv stack, upsample (borders included)."""
    m = _live(_with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=stride, classes=classes), seed=3)
    br, g = m.decoder.sky_branch, torch.Generator().manual_seed(8)
    with torch.no_grad():
        br.in_mean.copy_(torch.randn(br.in_mean.shape, generator=g))
        br.in_std.copy_(0.5 + torch.rand(br.in_std.shape, generator=g))
    n2, nm = m.cfg.decoder_dims[3], m.cfg.mask_dim
    parts = [torch.randn(1, c, 12, 18, generator=g) for c in (n2, nm, *[1] * len(classes))]
    feats = torch.cat(parts, 1)
    with torch.no_grad():
        x = (feats - br.in_mean[:, None, None]) / br.in_std[:, None, None]
        ref = br.body(torch.nn.functional.avg_pool2d(x, stride) if stride > 1 else x)
        if stride > 1:
            ref = torch.nn.functional.interpolate(ref, size=(12, 18), mode="bilinear", align_corners=False)
        a, b = br(parts), br(feats)
    assert float(ref.abs().max()) > 0.1
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_checkpoint_int8_and_tiling_carry_the_branch(tmp_path, stride):
    from campipe.segmentation.tiling import set_tiling

    m = _live(_with_branch(calibrated_model(tiny_config(input_size=(256, 96), mask_stride=2, sem_head_hidden=8)),
                           stride=stride))
    with torch.no_grad():
        m.decoder.sky_branch.in_mean.fill_(0.25)
        m.decoder.sky_branch.in_std.fill_(2.0)
    x = torch.randn(1, 3, 256, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m(x)
    back, meta = load_checkpoint(save_checkpoint(tmp_path / "f.pt", m))
    assert meta["config_obj"].sky_head_hidden == 8 and meta["config_obj"].sky_head_stride == stride
    assert torch.equal(back.decoder.sky_branch.in_std, m.decoder.sky_branch.in_std)
    q, _ = load_checkpoint(save_checkpoint(tmp_path / "q.pt", m, quantize=True))
    qb, fb = q.decoder.sky_branch, m.decoder.sky_branch
    assert torch.equal(qb.in_mean, fb.in_mean) and torch.equal(qb.in_std, fb.in_std)  # 1-D: kept in float
    for i in (0, 2, 4):  # int8 per output channel: within half a step of the float weights
        w, wq = fb.body[i].weight, qb.body[i].weight
        step = w.reshape(w.shape[0], -1).abs().amax(1) / 127
        assert bool(((wq - w).abs().reshape(w.shape[0], -1).amax(1) <= step / 2 + 1e-7).all())
    with torch.no_grad():
        assert torch.equal(back(x)["sem_logits"], ref["sem_logits"])
        tiled = set_tiling(back, 4)(x)
    assert torch.allclose(tiled["sem_logits"], ref["sem_logits"], atol=1e-5)


def test_init_weights_keeps_a_new_branch_at_zero_and_refuses_another_size(tmp_path):
    from campipe.segmentation.training.train import init_weights

    plain = calibrated_model(tiny_config(mask_stride=2))
    src = save_checkpoint(tmp_path / "plain.pt", plain)
    cfg = tiny_config(mask_stride=2, sky_head_hidden=8)
    m = build_model(cfg).eval()
    init_weights(m, cfg, src)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(m(x)["sem_logits"], plain(x)["sem_logits"])
    p = save_checkpoint(tmp_path / "b.pt", _live(m))
    other = tiny_config(mask_stride=2, sky_head_hidden=4)
    with pytest.raises(ValueError, match="sky_head_hidden"):
        init_weights(build_model(other), other, p)
    strided = tiny_config(mask_stride=2, sky_head_hidden=8, sky_head_stride=2)
    with pytest.raises(ValueError, match="sky_head_stride"):
        init_weights(build_model(strided), strided, p)
    more = tiny_config(mask_stride=2, sky_head_hidden=8, sky_head_classes=("sky", "skin"))
    with pytest.raises(ValueError, match="sky_head_classes"):
        init_weights(build_model(more), more, p)


@pytest.mark.parametrize("stride,classes", [(1, ("sky",)), (2, ("sky",)), (2, ("sky", "skin"))])
def test_onnx_matches_eager_with_a_sky_branch(tmp_path, stride, classes):
    pytest.importorskip("onnxruntime")
    m = _live(_with_branch(calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8)),
                           stride=stride, classes=classes))
    assert_onnx_matches_eager(m, tmp_path / "s.onnx")


def test_fit_learns_a_sky_the_frozen_logit_misses():
    """Generated cached inputs: the sky is where feature channel 0 is high, the frozen sky logit says "no sky"
    everywhere. The fit must find it (pooled IoU at the feature resolution from 0 to > 0.9) and leave the
    normalisation set from the data."""
    from campipe.segmentation.training.fit_sky_branch import cached_entry, fit, pooled_iou

    m = _with_branch(calibrated_model(tiny_config(mask_stride=2)))
    cin = m.decoder.sky_branch.in_mean.numel()
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(12):
        f = rng.normal(0, 1, (cin, 24, 24)).astype(np.float32)
        sky = np.zeros((24, 24), bool)
        sky[: rng.integers(6, 18)] = True  # a sky band at the top, rows of varying height
        f[0] = np.where(sky, 2.0, -2.0) + 0.3 * f[0]
        f[-1] = -4.0  # the frozen model's sky logit: "no sky"
        pool.append(cached_entry(f, sky[None].astype(np.float32), np.ones((1, 24, 24), bool), 1))
    train, held = pool[:8], pool[8:]
    assert pooled_iou(held) == 0.0
    losses = fit(m, train, train, steps=150, batch=8, patch=16, log=lambda s: None)
    assert losses[-1] < losses[0]
    br = m.decoder.sky_branch
    assert float(br.in_mean[0]) != 0.0 and float(br.in_std[1]) != 1.0
    assert pooled_iou(held, br) > 0.9


def test_calibration_offset_moves_the_final_sky_logit_exactly():
    """The branch reads the sky logit, so the calibration's sky offset goes after it (its last bias)."""
    from campipe.segmentation.training.calibrate import apply_offsets

    m = _live(_with_branch(calibrated_model(tiny_config(mask_stride=2))))
    names = list(m.cfg.semantic_classes)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = m(x, scene_only=True)["sem_logits"]
        apply_offsets(m, {"sky": 1.5, "hair": -0.5})
        out = m(x, scene_only=True)["sem_logits"]
    s, h = names.index("sky"), names.index("hair")
    assert torch.allclose(out[:, s], ref[:, s] + 1.5, atol=1e-5)
    assert torch.allclose(out[:, h], ref[:, h] - 0.5, atol=1e-5)


def test_row_exchanges_refuse_the_sky_row_of_a_branch_model():
    from campipe.segmentation.training.merge_heads import merge_heads
    from campipe.segmentation.training.refit_rows import current_rows

    plain = calibrated_model(tiny_config(mask_stride=2, sem_head_hidden=8))
    a = _with_branch(plain)
    b = copy.deepcopy(a)
    with pytest.raises(ValueError, match="sky branch"):
        merge_heads(a, b, ["sky"])
    merge_heads(a, b, ["hair"])  # other rows still exchange
    with pytest.raises(ValueError, match="sky branch"):
        current_rows(a, ["sky", "hair"])


def test_fit_learns_two_classes_each_from_the_photos_that_know_it():
    """Two refined classes (sky, skin), generated: the sky is where channel 0 is high and only the "street" photos
    know it; the skin where channel 1 is high and only the "face" photos know it. Both frozen logits say "no". The
    fit must learn both (held-out IoU > 0.9 each) with the draws split by set shares, and refuse shares it cannot
    honour."""
    from campipe.segmentation.training.fit_sky_branch import cached_entry, fit, pooled_iou

    m = _with_branch(calibrated_model(tiny_config(mask_stride=2)), classes=("sky", "skin"))
    cin = m.decoder.sky_branch.in_mean.numel()
    rng = np.random.default_rng(1)
    pool, groups = [], []
    for i in range(16):
        f = rng.normal(0, 1, (cin, 24, 24)).astype(np.float32)
        street = i % 2 == 0
        y = np.zeros((2, 24, 24), np.float32)
        y[0, : rng.integers(6, 18)] = 1.0
        y[1, :, rng.integers(6, 18):] = 1.0
        f[0] = np.where(y[0] > 0, 2.0, -2.0) + 0.3 * f[0]
        f[1] = np.where(y[1] > 0, 2.0, -2.0) + 0.3 * f[1]
        f[-2:] = -4.0  # frozen sky and skin logits
        k = np.zeros((2, 24, 24), bool)
        k[0 if street else 1] = True
        pool.append(cached_entry(f, y, k, 1))
        groups.append("street" if street else "face")
    train, held = pool[:12], pool[12:]
    assert pooled_iou(held, None, 0) == 0.0 and pooled_iou(held, None, 1) == 0.0
    fit(m, train, train, steps=2000, batch=8, patch=16, log=lambda s: None, groups=groups[:12],
        shares={"street": 0.5, "face": 0.5})
    br = m.decoder.sky_branch
    assert pooled_iou(held, br, 0) > 0.9
    assert pooled_iou(held, br, 1) > 0.9
    for bad in ({"street": 0.7, "face": 0.5}, {"street": 0.0}, {"tree": 0.5}):
        with pytest.raises(ValueError):
            fit(m, train, train, steps=1, batch=2, patch=16, log=lambda s: None, groups=groups[:12], shares=bad)
    with pytest.raises(ValueError, match="groups"):
        fit(m, train, train, steps=1, batch=2, patch=16, log=lambda s: None, shares={"street": 0.5})


def test_calibration_offsets_and_row_guards_follow_the_refined_classes():
    from campipe.segmentation.training.calibrate import apply_offsets
    from campipe.segmentation.training.merge_heads import merge_heads
    from campipe.segmentation.training.refit_rows import current_rows

    plain = calibrated_model(tiny_config(mask_stride=2, sem_head_hidden=8))
    m = _live(_with_branch(plain, classes=("sky", "skin")))
    names = list(m.cfg.semantic_classes)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    bias = m.decoder.sky_branch.last.bias.detach().clone()
    with torch.no_grad():
        ref = m(x, scene_only=True)["sem_logits"]
        apply_offsets(m, {"skin": 0.75, "sky": -1.0, "hair": 0.25})
        out = m(x, scene_only=True)["sem_logits"]
    torch.testing.assert_close(m.decoder.sky_branch.last.bias.detach(), bias + torch.tensor([-1.0, 0.75]))
    for c, off in (("skin", 0.75), ("sky", -1.0), ("hair", 0.25)):
        i = names.index(c)
        assert torch.allclose(out[:, i], ref[:, i] + off, atol=1e-5)
    b = copy.deepcopy(m)
    with pytest.raises(ValueError, match=r"\['skin'\]"):
        merge_heads(m, b, ["skin", "hair"])
    with pytest.raises(ValueError, match="sky branch"):
        current_rows(m, ["teeth", "skin"])
    merge_heads(m, b, ["hair", "teeth"])


def test_fit_command_rejects_a_malformed_share(tmp_path):
    from campipe.segmentation.training.fit_sky_branch import main

    with pytest.raises(SystemExit, match="SET=P"):
        main(["--float", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt"), "--share", "camvid"])
    base = ["--float", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt")]
    with pytest.raises(SystemExit, match="needs hair"):  # refused before any file or data is read
        main([*base, "--classes", "skin", "--hair-below", "0.35"])
    with pytest.raises(SystemExit, match="needs one of them"):
        main([*base, "--classes", "hair", "--bare-skin-unknown"])
    with pytest.raises(SystemExit, match="needs sky"):
        main([*base, "--extra", "--classes", "hair", "--portrait-bg-not-sky"])
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit, match="--hair-below"):
            main([*base, "--classes", "hair", "--hair-below", bad])



def _with_class_branch(plain: torch.nn.Module, classes=("skin",), hidden: int = 8, stride: int = 4,
                       seed: int | None = 11, mode: str | None = None) -> torch.nn.Module:
    """``plain`` plus a further residual branch (``model.class_branches``, of ``mode`` if given), live unless
    ``seed`` is None."""
    d = plain.cfg.to_dict()
    entry = [list(classes), hidden, stride] + ([mode] if mode else [])
    cfg = HyperDETRConfig.from_dict({**d, "class_branches": [*d["class_branches"], entry]})
    m = build_model(cfg).eval()
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("decoder.class_branches.") for k in missing)
    return m if seed is None else _live(m, seed, m.decoder.class_branches[-1])


def test_class_branches_config_validation_and_round_trip():
    for bad in [[[["skin"], 0, 2]], [[["skin"], 8, 3]], [[["fur"], 8, 2]], [[[], 8, 2]],
                [[["skin"], 8, 2], [["skin", "teeth"], 8, 2]]]:
        with pytest.raises(ValueError, match="class_branches"):
            tiny_config(class_branches=bad)
    with pytest.raises(ValueError, match="class_branches"):  # the sky branch refines skin already
        tiny_config(sky_head_hidden=4, sky_head_classes=("sky", "skin"), class_branches=[[["skin"], 8, 4]])
    cfg = tiny_config(sky_head_hidden=4, class_branches=[[["skin"], 8, 4], [["teeth", "glasses"], 4, 1]])
    assert cfg.class_branches == ((("skin",), 8, 4), (("teeth", "glasses"), 4, 1))
    assert HyperDETRConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # modes: "both" is the default and not stored; "lower" is kept as a fourth item; anything else is refused
    assert tiny_config(class_branches=[[["skin"], 8, 4, "both"]]).class_branches == ((("skin",), 8, 4),)
    low = tiny_config(sky_head_hidden=4, class_branches=[[["hair"], 8, 4, "lower"], [["skin"], 8, 4]])
    assert low.class_branches == ((("hair",), 8, 4, "lower"), (("skin",), 8, 4))
    assert HyperDETRConfig.from_dict(json.loads(json.dumps(low.to_dict()))) == low
    assert [m for *_, m in low.branch_specs] == ["both", "lower", "both"]  # the sky branch first
    for bad in ([[["hair"], 8, 4, "raise"]], [[["hair"], 8, 4, "lower", 1]], [[["hair"], 8]]):
        with pytest.raises(ValueError, match="class_branches entry"):
            tiny_config(class_branches=bad)


@pytest.mark.parametrize("stride", [1, 4])
def test_a_lower_only_branch_only_lowers_its_logits(tmp_path, stride):
    """Mode "lower": the branch's residual is min(r, 0) of the same branch's "both" residual (exactly, before the
    upsampling: at stride 1 the difference of the logits); its classes' logits never rise, the others are the
    model's without it; a fresh one is the identity; the exported graph agrees; and a calibration offset moves its
    classes' final logits by exactly the offset (on the head's bias, with the branch's input mean moved along),
    also through the int8 file."""
    from campipe.segmentation.training.calibrate import apply_offsets

    plain = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    both = _with_class_branch(plain, ("hair", "teeth"), stride=stride)
    low = _with_class_branch(plain, ("hair", "teeth"), stride=stride, mode="lower")
    low.load_state_dict(both.state_dict())
    fresh = _with_class_branch(plain, ("hair", "teeth"), stride=stride, seed=None, mode="lower")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    names = list(plain.cfg.semantic_classes)
    ks = [names.index("hair"), names.index("teeth")]
    others = [i for i in range(len(names)) if i not in ks]
    with torch.no_grad():
        a, b, c, f = plain(x)["sem_logits"], both(x)["sem_logits"], low(x)["sem_logits"], fresh(x)["sem_logits"]
    assert torch.equal(f, a)
    assert torch.equal(c[:, others], a[:, others])
    r = c[:, ks] - a[:, ks]
    assert float(r.max()) <= 1e-6 and float(r.min()) < -1e-2          # lowers somewhere, never raises
    assert float((b[:, ks] - a[:, ks]).max()) > 1e-2                    # where the "both" branch raises
    if stride == 1:
        torch.testing.assert_close(r, (b[:, ks] - a[:, ks]).clamp(max=0), atol=1e-5, rtol=0)
    assert_onnx_matches_eager(low, tmp_path / "low.onnx")
    with torch.no_grad():
        apply_offsets(low, {"hair": 0.5, "teeth": -0.75, "skin": 0.25})
        moved = low(x)["sem_logits"]
        q, _ = load_checkpoint(save_checkpoint(tmp_path / "q.pt", low, quantize=True))
        assert torch.equal(q.decoder.class_branches[0].in_mean, low.decoder.class_branches[0].in_mean)
    shift = torch.zeros(len(names))
    shift[ks[0]], shift[ks[1]], shift[names.index("skin")] = 0.5, -0.75, 0.25
    torch.testing.assert_close(moved, c + shift.view(1, -1, 1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sky", [False, True])
def test_class_branch_starts_as_the_identity_and_writes_only_its_classes(sky):
    plain = calibrated_model(tiny_config(mask_stride=2, sem_head_hidden=8))
    if sky:
        plain = _live(_with_branch(plain, stride=2))
    fresh = _with_class_branch(plain, ("skin", "teeth"), seed=None)
    m = _with_class_branch(plain, ("skin", "teeth"))
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    names = list(m.cfg.semantic_classes)
    ks = [names.index("skin"), names.index("teeth")]
    with torch.no_grad():
        a, b, c = plain(x), fresh(x), m(x)
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
    others = [i for i in range(len(names)) if i not in ks]
    assert torch.equal(c["sem_logits"][:, others], a["sem_logits"][:, others])
    assert torch.equal(c["pred_masks"], a["pred_masks"])
    for k in ks:
        assert float((c["sem_logits"][:, k] - a["sem_logits"][:, k]).abs().mean()) > 1e-3


def test_class_branch_survives_checkpoint_int8_tiling_onnx_and_calibration(tmp_path):
    from campipe.segmentation.tiling import set_tiling
    from campipe.segmentation.training.calibrate import apply_offsets
    from campipe.segmentation.training.merge_heads import merge_heads
    from campipe.segmentation.training.train import init_weights

    plain = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    m = _with_class_branch(_live(_with_branch(plain, stride=2)), ("skin",), stride=4)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(x)["sem_logits"]
    back, meta = load_checkpoint(save_checkpoint(tmp_path / "f.pt", m))
    assert meta["config_obj"].class_branches == ((("skin",), 8, 4),)
    with torch.no_grad():
        assert torch.equal(back(x)["sem_logits"], ref)
        tiled = set_tiling(copy.deepcopy(back), 4)(x)["sem_logits"]
    assert torch.allclose(tiled, ref, atol=1e-5)
    q, _ = load_checkpoint(save_checkpoint(tmp_path / "q.pt", m, quantize=True))
    for i in (0, 2, 4):  # int8 per output channel: within half a step of the float weights
        w, wq = m.decoder.class_branches[0].body[i].weight, q.decoder.class_branches[0].body[i].weight
        step = w.reshape(w.shape[0], -1).abs().amax(1) / 127
        assert bool(((wq - w).abs().reshape(w.shape[0], -1).amax(1) <= step / 2 + 1e-7).all())
    assert_onnx_matches_eager(m, tmp_path / "c.onnx")
    k = list(m.cfg.semantic_classes).index("skin")
    with torch.no_grad():
        apply_offsets(back, {"skin": 0.5})
        out = back(x)["sem_logits"]
    assert torch.allclose(out[:, k], ref[:, k] + 0.5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\['skin'\]"):
        merge_heads(m, copy.deepcopy(m), ["skin"])
    other = tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8, sky_head_hidden=8, sky_head_stride=2,
                        class_branches=[[["skin"], 8, 2]])
    with pytest.raises(ValueError, match="class_branches"):
        init_weights(build_model(other), other, tmp_path / "f.pt")
    src = save_checkpoint(tmp_path / "sky_only.pt", _live(_with_branch(plain, stride=2)))
    new = tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8, sky_head_hidden=8, sky_head_stride=2,
                      class_branches=[[["skin"], 8, 4]])
    fresh = build_model(new).eval()
    init_weights(fresh, new, src)  # a new class branch keeps its zero start
    assert float(fresh.decoder.class_branches[0].last.weight.detach().abs().sum()) == 0.0


def test_branches_run_jointly_as_if_one_after_the_other(tmp_path):
    """``ConvDecoder.add_branch_residuals`` runs branches of one stride together (:func:`joint_branches`: one
    read-out conv, one upsampling); the result must equal applying the branches one after the other, each with its
    own normalisation (and the skin branch, of mode "lower", with its clamp), in eager mode and in the exported
    graph."""
    from campipe.segmentation.model import _add_residual, joint_branches

    plain = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    m = _with_class_branch(_with_class_branch(_live(_with_branch(plain, stride=4)), ("skin",), hidden=8, stride=4,
                                              mode="lower"),
                           ("teeth", "glasses"), hidden=4, stride=2, seed=12)
    g = torch.Generator().manual_seed(4)
    dec = m.decoder
    with torch.no_grad():
        for br in dec.residual_branches:
            br.in_mean.copy_(torch.randn(br.in_mean.shape, generator=g))
            br.in_std.copy_(0.5 + torch.rand(br.in_std.shape, generator=g))
        dec.class_branches[0].last.bias -= 1.0  # so that the lower-only skin branch lowers somewhere
    assert [b.stride for b in dec.residual_branches] == [4, 4, 2]

    def one_after_the_other(sem, d2, x):
        for br, idx in zip(dec.residual_branches, dec.branch_indices):
            sem = _add_residual(sem, br(dec.branch_parts(sem, d2, x, idx)), idx)
        return sem

    x = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        joint = m(x)["sem_logits"]
        dec.add_branch_residuals = one_after_the_other
        ref = m(x)["sem_logits"]
        del dec.add_branch_residuals
        bare = plain(x)["sem_logits"]
    names = list(m.cfg.semantic_classes)
    for c in ("sky", "skin", "teeth", "glasses"):  # every branch acts
        k = names.index(c)
        assert float((ref[:, k] - bare[:, k]).abs().mean()) > 1e-3, c
    torch.testing.assert_close(joint, ref, atol=1e-5, rtol=1e-5)
    assert_onnx_matches_eager(m, tmp_path / "joint.onnx")
    with pytest.raises(ValueError, match="one stride"):
        joint_branches(dec.residual_branches, [[]] * 3)


def test_fit_trains_a_class_branch_and_leaves_the_sky_branch():
    """``fit(..., branch=)`` trains the given branch only (generated skin band, frozen logit "no skin"), on inputs
    cached pooled by its stride (4), and refuses a patch that is not a multiple of that stride."""
    from campipe.segmentation.training.fit_sky_branch import cached_entry, fit, pooled_iou

    m = _with_class_branch(_live(_with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=2)), ("skin",),
                           stride=4, seed=None)
    sky_before = copy.deepcopy(m.decoder.sky_branch.state_dict())
    br = m.decoder.class_branches[0]
    for p in m.parameters():
        p.requires_grad_(False)
    for p in br.body.parameters():
        p.requires_grad_(True)
    cin = br.in_mean.numel()
    rng = np.random.default_rng(3)
    pool = []
    for _ in range(12):
        f = rng.normal(0, 1, (cin, 32, 32)).astype(np.float32)
        y = np.zeros((1, 32, 32), np.float32)
        y[0, :, rng.integers(8, 24):] = 1.0
        f[0] = np.where(y[0] > 0, 2.0, -2.0) + 0.3 * f[0]
        f[-1] = -4.0
        pool.append(cached_entry(f, y, np.ones((1, 32, 32), bool), 4))
    assert pool[0].pooled.shape == (cin, 8, 8) and pool[0].logits.shape == (1, 32, 32)
    fit(m, pool[:8], pool[:8], steps=300, batch=8, patch=16, log=lambda s: None, branch=br)
    assert pooled_iou(pool[8:], br) > 0.9
    with pytest.raises(ValueError, match="multiple"):
        fit(m, pool[:8], pool[:8], steps=1, batch=2, patch=18, log=lambda s: None, branch=br)
    for k, v in m.decoder.sky_branch.state_dict().items():
        assert torch.equal(v, sky_before[k]), k


def test_merge_class_branches_puts_a_branch_beside_another_sky_branch_exactly(tmp_path):
    """``merge_heads --class-branches``: the base's sky, the other model's class-branch classes, bit for bit; and the
    refusals that keep that exact (different trunks, a sky branch refining a class the branch reads)."""
    from campipe.segmentation.training.merge_heads import main, merge_class_branches

    plain = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    base = _live(_with_branch(plain, stride=4), seed=3)  # a cheaper sky branch, other weights
    other = _with_class_branch(_live(_with_branch(plain, stride=2), seed=5), ("skin", "teeth"), stride=4)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    merged = merge_class_branches(base, other)
    names = list(plain.cfg.semantic_classes)
    sky, sk = names.index("sky"), [names.index("skin"), names.index("teeth")]
    rest = [i for i in range(len(names)) if i != sky and i not in sk]
    with torch.no_grad():
        m, b, o = merged(x), base(x), other(x)
    assert merged.cfg.class_branches == other.cfg.class_branches and merged.cfg.sky_head_stride == 4
    assert torch.equal(m["sem_logits"][:, sky], b["sem_logits"][:, sky])
    assert torch.equal(m["sem_logits"][:, sk], o["sem_logits"][:, sk])
    assert not torch.equal(m["sem_logits"][:, sky], o["sem_logits"][:, sky])  # the sky really is the base's
    assert torch.equal(m["sem_logits"][:, rest], b["sem_logits"][:, rest])
    assert torch.equal(m["pred_masks"], b["pred_masks"]) and torch.equal(m["pred_logits"], b["pred_logits"])

    changed = copy.deepcopy(other)
    with torch.no_grad():
        changed.decoder.sem_head.bias[0] += 1.0
    with pytest.raises(ValueError, match="differ outside their residual branches"):
        merge_class_branches(base, changed)
    with pytest.raises(ValueError, match="has no class branches"):
        merge_class_branches(base, base)
    with pytest.raises(ValueError, match="has class branches already"):
        merge_class_branches(merged, other)
    sky_skin = _live(_with_branch(plain, stride=2, classes=("sky", "skin")), seed=4)
    with pytest.raises(ValueError, match=r"refines \['skin'\]"):
        merge_class_branches(sky_skin, other)
    beside = _with_class_branch(sky_skin, ("skin",), stride=4, mode="lower")  # fitted on sky_skin's skin output
    with pytest.raises(ValueError, match=r"other model's sky branch refines \['skin'\]"):
        merge_class_branches(base, beside)

    fa, fb = save_checkpoint(tmp_path / "a.pt", base), save_checkpoint(tmp_path / "b.pt", other)
    assert main(["--base", str(fa), "--from", str(fb), "--class-branches", "--out", str(tmp_path / "c.pt")]) == 0
    back, meta = load_checkpoint(tmp_path / "c.pt")
    assert meta["extra"]["merged_class_branches"]["class_branches"] == [[["skin", "teeth"], 8, 4]]
    with torch.no_grad():
        assert torch.equal(back(x)["sem_logits"], m["sem_logits"])


def test_cache_records_equals_cache_inputs_and_a_negative_synth_is_refused(tmp_path):
    """In-memory samples (``--synth`` scenes) are cached exactly as the same photo read from a data folder."""
    import cv2

    from campipe.segmentation.training import datasets as D
    from campipe.segmentation.training.fit_sky_branch import cache_inputs, cache_records, main

    m = _with_class_branch(calibrated_model(tiny_config(mask_stride=2)), ("skin",), seed=None)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    raw = np.zeros((48, 64), np.uint8)
    raw[10:30, 20:40] = 1  # CelebAMask skin
    raw[30:40, 20:40] = 13  # hair
    for sub in ("images", "masks"):
        (tmp_path / "celebamask" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "celebamask" / "images" / "x.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "celebamask" / "masks" / "x.png"), raw)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    e1, = cache_inputs(m, tmp_path, "celebamask", ["x"], mean, std, ["skin"], stride=4)
    rec = D.Record("celebamask", "x", img, D.map_labels("celebamask", raw)[0], True)
    e2, = cache_records(m, [rec], mean, std, ["skin"], stride=4)
    assert e1.pooled.shape[0] == m.decoder.class_branches[0].in_mean.numel() and e1.labels.shape == e1.logits.shape
    assert e1.pooled.shape[1:] == tuple(d // 4 for d in e1.labels.shape[1:])
    for a, b in zip(e1, e2):
        assert torch.equal(a, b) if torch.is_tensor(a) else np.array_equal(a, b)
    assert 0.05 < float(e1.labels.mean()) < 0.3 and e1.known.all()  # the skin square, every cell known
    # the entry is the unpooled entry pooled: the branch's output from it equals its forward on the unpooled input
    full, = cache_inputs(m, tmp_path, "celebamask", ["x"], mean, std, ["skin"], stride=1)
    br = _live(m, 5, m.decoder.class_branches[0]).decoder.class_branches[0]
    with torch.no_grad():
        ref = br(full.pooled[None].float())
        got = br.from_pooled(e1.pooled[None].float(), tuple(full.pooled.shape[-2:]))
    assert float(ref.std()) > 0.02  # the live branch acts
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)  # float16 rounding before / after the pooling (~1e-4)
    assert torch.equal(full.logits, e1.logits) and torch.allclose(full.stats, e1.stats)
    with pytest.raises(SystemExit, match="--synth"):
        main(["--float", str(tmp_path / "none.pt"), "--data", str(tmp_path / "no_data"), "--out",
              str(tmp_path / "o.pt"), "--synth", "-1"])  # refused before any data is looked for


def test_twilight_records_relight_frames_and_keep_their_labels(tmp_path):
    """``--twilight``'s samples: CamVid frames re-lit as dusk (darker, a gradient sky), labels untouched, seeded."""
    from campipe.segmentation.training.datasets import list_stems, map_labels, read_pair
    from campipe.segmentation.training.fit_sky_branch import twilight_records
    from test_segmentation_helpers import write_tiny_data

    data = write_tiny_data(tmp_path)
    stems = list_stems(data, "camvid", "train")
    recs = twilight_records(data, stems, seed=5)
    assert [r.stem for r in recs] == stems and {r.set_name for r in recs} == {"twilight"}
    for r in recs:
        img, raw = read_pair(data, "camvid", r.stem)
        lab, inst_known = map_labels("camvid", raw, None)
        assert np.array_equal(r.lab, lab) and r.inst_known == inst_known
        assert r.image.mean() < img.mean() - 20  # darker
        assert np.ptp(img[:25].astype(int), axis=(0, 1)).max() == 0  # the tiny frames' sky is one flat colour ...
        assert np.abs(r.image[0].astype(int) - r.image[24]).max() > 5  # ... re-lit, a zenith-to-horizon gradient
    again = twilight_records(data, stems, seed=5)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(recs, again))


def test_refit_replaces_only_the_sky_branch_with_twilight_frames_and_a_capped_scored_set(tmp_path):
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.training.fit_sky_branch import main
    from test_segmentation_helpers import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    m = _with_class_branch(_live(_with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=4)), ("skin",))
    src = tmp_path / "base.pt"
    save_checkpoint(src, m, m.cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    base = ["--float", str(src), "--data", str(data)]
    with pytest.raises(SystemExit, match="already has a sky branch"):
        main([*base, "--out", str(tmp_path / "x.pt"), "--stride", "4", "--hidden", "8"])
    with pytest.raises(SystemExit, match="choose one"):
        main([*base, "--out", str(tmp_path / "x.pt"), "--refit", "--extra"])
    with pytest.raises(SystemExit, match="--scored-limit"):
        main([*base, "--out", str(tmp_path / "x.pt"), "--refit", "--scored-limit", "2"])
    out = tmp_path / "t.pt"
    assert main([*base, "--out", str(out), "--refit", "--hidden", "8", "--stride", "4", "--steps", "3", "--batch",
                 "2", "--patch", "8", "--twilight", "3", "--share", "twilight=0.3", "--holdout", "0",
                 "--scored-limit", "3", "--portrait-bg-not-sky"]) == 0
    old, new = read_checkpoint(src)["state_dict"], read_checkpoint(out)["state_dict"]
    assert old.keys() == new.keys()
    for k in old:
        if k.startswith("decoder.sky_branch.body."):
            assert not torch.equal(old[k], new[k]), k  # refitted from a fresh branch (the old one was live)
        elif not k.startswith("decoder.sky_branch."):
            assert torch.equal(old[k], new[k]), k      # the skin branch and the trunk are untouched
    rec = read_checkpoint(out)["extra"]["sky_branch"]
    assert rec["refit"] and rec["twilight"] == 3 and rec["photos"]["twilight"] == 3
    assert rec["photos"]["camvid"] == 3 and rec["scored_limit"] == 3  # 4 training frames, capped
    assert rec["portrait_bg_not_sky"] and rec["photos"]["celebamask"] == 6


def test_refit_of_a_further_branch_replaces_that_branch_only_and_its_record(tmp_path):
    """``--refit --classes skin --lower-only`` on a model with a sky, a hair and a lower-only skin branch fits a
    fresh skin branch at the same place (mode kept "lower", the new --hidden applied), leaves the trunk and the other
    branches bit for bit, and overwrites only that branch's record; a refit of a branch the model lacks (or of the
    other mode) is refused before any photo is read."""
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.training.fit_sky_branch import main
    from test_segmentation_helpers import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    m = _with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=4)
    m = _with_class_branch(_with_class_branch(_live(m), ("hair",)), ("skin",), mode="lower", seed=12)
    src = tmp_path / "base.pt"
    save_checkpoint(src, m, m.cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    extra={"class_branch:hair": {"lower_only": False, "steps": 1},
                           "class_branch:skin": {"lower_only": True, "steps": 1}})
    base = ["--float", str(src), "--data", str(data), "--refit"]
    for bad, what in [(["--classes", "teeth"], "no branch of mode 'both' on teeth"),
                      (["--classes", "skin"], "no branch of mode 'both' on skin"),
                      (["--classes", "glasses", "--lower-only"], "no branch of mode 'lower' on glasses")]:
        with pytest.raises(SystemExit, match=what):
            main([*base, "--out", str(tmp_path / "x.pt"), *bad])
    with pytest.raises(SystemExit, match="--lower-only"):
        main(["--float", str(src), "--data", str(data), "--out", str(tmp_path / "x.pt"), "--lower-only"])
    out = tmp_path / "s.pt"
    assert main([*base, "--out", str(out), "--classes", "skin", "--lower-only", "--hidden", "4", "--stride", "4",
                 "--steps", "3", "--batch", "2", "--patch", "8", "--holdout", "25"]) == 0
    ck = read_checkpoint(out)
    assert ck["config"]["class_branches"] == [[["hair"], 8, 4], [["skin"], 4, 4, "lower"]]
    old, new = read_checkpoint(src)["state_dict"], ck["state_dict"]
    skin = "decoder.class_branches.1."
    assert {k for k in old if not k.startswith(skin)} == {k for k in new if not k.startswith(skin)}
    assert any(k.startswith(skin + "body.") for k in new)
    for k in new:
        if k.startswith(skin + "body.") and k.endswith("weight"):
            assert new[k].shape != old[k].shape, k  # a fresh branch of hidden 4 (the old one had 8)
        elif not k.startswith(skin):
            assert torch.equal(old[k], new[k]), k  # trunk, sky and hair branches untouched
    assert ck["extra"]["class_branch:hair"] == {"lower_only": False, "steps": 1}
    rec = ck["extra"]["class_branch:skin"]
    assert rec["refit"] and rec["lower_only"] and rec["hidden"] == 4 and rec["steps"] == 3
    assert "class_branch:skin:lower" not in ck["extra"]
    model, _ = load_checkpoint(out)
    assert model.decoder.class_branches[1].lower_only and not model.decoder.class_branches[0].lower_only


def test_extra_skin_fit_makes_celebamask_bare_skin_unknown_for_skin(tmp_path, monkeypatch):
    """``--extra --classes skin --bare-skin-unknown`` relabels every CelebAMask photo of the fit (not the held-out
    ones) with skin, and only skin, unknown on bare skin, and records the option with the branch."""
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.training import datasets as D
    from campipe.segmentation.training.fit_sky_branch import main
    from test_segmentation_helpers import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    m = _live(_with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=4))
    src = tmp_path / "base.pt"
    save_checkpoint(src, m, m.cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    seen = []
    real = D.unknown_on_bare_skin

    def spy(lab, image, classes=("person",)):
        seen.append(tuple(classes))
        return real(lab, image, classes)

    monkeypatch.setattr(D, "unknown_on_bare_skin", spy)
    out = tmp_path / "s.pt"
    assert main(["--float", str(src), "--data", str(data), "--out", str(out), "--extra", "--classes", "skin",
                 "--hidden", "8", "--stride", "4", "--steps", "3", "--batch", "2", "--patch", "8", "--holdout", "25",
                 "--bare-skin-unknown"]) == 0
    rec = read_checkpoint(out)["extra"]["class_branch:skin"]
    assert rec["bare_skin_unknown"]
    assert seen and set(seen) == {("skin",)}
    assert len(seen) == rec["photos"]["celebamask"]  # the fit's photos, not the held-out ones


def test_a_lower_only_branch_is_fitted_both_ways_and_the_fit_command_builds_one(tmp_path):
    """Generated cached inputs where the frozen logit calls the class on a few rows it should not (to remove) and
    misses many rows it should call (to add). Fitted with min(r, 0) in place, the branch dies (the pixels asking for
    more push the residual above zero, where the clamp passes no gradient: rule 22 in MODEL_CARD.md) and changes
    nothing; fitted both ways and then switched to "lower", it keeps its removals and gains. ``--extra
    --lower-only`` writes a branch of mode "lower" and records it; without ``--extra`` it is refused."""
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.training.fit_sky_branch import cached_entry, fit, main, pooled_iou
    from test_segmentation_helpers import write_tiny_data

    def fitted(mode, wrong: int, missed: int):
        """A branch fitted where the frozen logit calls the top ``wrong`` rows that are not the class and misses
        the bottom ``missed`` rows that are; the rows between are right."""
        rng = np.random.default_rng(5)
        m = _with_class_branch(calibrated_model(tiny_config(mask_stride=2)), ("hair",), stride=4, seed=None, mode=mode)
        br = m.decoder.class_branches[0]
        for p in m.parameters():
            p.requires_grad_(False)
        for p in br.body.parameters():
            p.requires_grad_(True)
        entries = []
        for _ in range(12):
            y = np.zeros((1, 32, 32), np.float32)
            y[0, wrong:] = 1.0
            f = rng.normal(0, 1, (br.in_mean.numel(), 32, 32)).astype(np.float32)
            f[0] = np.where(y[0] > 0, 2.0, -2.0) + 0.3 * rng.normal(0, 1, (32, 32))
            f[-1] = np.where(np.arange(32)[:, None] < 32 - missed, 3.0, -3.0)
            entries.append(cached_entry(f, y, np.ones((1, 32, 32), bool), 4))
        fit(m, entries[:8], entries[:8], steps=300, batch=8, patch=16, log=lambda s: None, branch=br)
        return br, entries[8:]

    br, held = fitted("lower", 8, 16)  # more to add than to remove: the first step pushes the residual up
    assert abs(pooled_iou(held, br) - pooled_iou(held)) < 1e-3       # died: the clamp passes no gradient
    assert float(br.last.weight.detach().abs().max()) < 0.05
    br, held = fitted(None, 10, 12)
    before, both = pooled_iou(held), pooled_iou(held, br)
    br.lower_only = True
    lowered = pooled_iou(held, br)
    assert both > lowered > before + 0.02                             # its removals alone still gain

    data = write_tiny_data(tmp_path / "data")
    src = tmp_path / "base.pt"
    plain = _live(_with_branch(calibrated_model(tiny_config(mask_stride=2)), stride=4))
    save_checkpoint(src, plain, plain.cfg, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    base = ["--float", str(src), "--data", str(data), "--classes", "skin", "--hidden", "8", "--stride", "4",
            "--steps", "3", "--batch", "2", "--patch", "8"]
    with pytest.raises(SystemExit, match="--extra"):
        main([*base, "--out", str(tmp_path / "x.pt"), "--lower-only"])
    out = tmp_path / "low.pt"
    assert main([*base, "--out", str(out), "--extra", "--lower-only"]) == 0
    _, meta = load_checkpoint(out)
    assert meta["config_obj"].class_branches == ((("skin",), 8, 4, "lower"),)
    assert read_checkpoint(out)["extra"]["class_branch:skin"]["lower_only"]


def test_a_lower_only_branch_beside_a_class_s_branch_adds_to_it_and_is_fitted_on_its_output(tmp_path):
    """A class may have one branch of each mode (``class_branches``): both read the logits before any branch and
    their residuals add up, in eager mode, jointly and in the exported graph; a calibration offset goes to the
    "both" branch and moves the logit exactly; ``fit_sky_branch --extra --lower-only`` on such a class caches the
    logits before the branches as the new branch's input and the model's output logits (with the other branch's
    residual) as what its residual is added to, and keeps the other branch's record."""
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.model import _add_residual
    from campipe.segmentation.training.calibrate import apply_offsets
    from campipe.segmentation.training.fit_sky_branch import cache_records, main
    from campipe.segmentation.training.datasets import Record, map_labels
    from test_segmentation_helpers import write_tiny_data

    with pytest.raises(ValueError, match="same mode"):
        tiny_config(class_branches=[[["skin"], 8, 4, "lower"], [["skin"], 8, 4, "lower"]])
    with pytest.raises(ValueError, match="same mode"):
        tiny_config(sky_head_hidden=4, sky_head_classes=("sky", "skin"), class_branches=[[["skin"], 8, 4]])
    assert tiny_config(sky_head_hidden=4, sky_head_classes=("sky", "skin"),
                       class_branches=[[["skin"], 8, 4, "lower"]]).class_branches == ((("skin",), 8, 4, "lower"),)

    plain = calibrated_model(tiny_config(keep_dec_layers=2, mask_stride=2, sem_head_hidden=8))
    one = _with_class_branch(plain, ("skin",), stride=4)
    two = _with_class_branch(one, ("skin", "teeth"), stride=4, seed=13, mode="lower")
    dec = two.decoder
    with torch.no_grad():
        dec.class_branches[1].last.bias -= 0.5  # so that it lowers somewhere
    names = list(two.cfg.semantic_classes)
    k, t = names.index("skin"), names.index("teeth")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(9))
    grab = {}

    def spy(sem, d2, x_, _add=dec.add_branch_residuals):
        grab["args"] = (sem, d2, x_)
        return _add(sem, d2, x_)

    with torch.no_grad():
        base = plain(x)["sem_logits"]
        first = one(x)["sem_logits"]
        dec.add_branch_residuals = spy
        out = two(x)["sem_logits"]
        del dec.add_branch_residuals
        sem, d2, mf = grab["args"]
        r = [br(dec.branch_parts(sem, d2, mf, idx)) for br, idx in zip(dec.residual_branches, dec.branch_indices)]
    torch.testing.assert_close(sem, base, atol=0, rtol=0)
    expect = _add_residual(_add_residual(base, r[0], dec.branch_indices[0]), r[1], dec.branch_indices[1])
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    assert float(r[1].max()) <= 0 and float(r[1][:, 0].min()) < -1e-2        # the lower branch acts on skin
    assert float((out[:, k] - first[:, k]).max()) <= 1e-5                       # and only lowers the first's skin
    others = [i for i in range(len(names)) if i not in (k, t)]
    assert torch.equal(out[:, others], base[:, others])
    assert_onnx_matches_eager(two, tmp_path / "two.onnx")
    calibrated = apply_offsets(copy.deepcopy(two), {"skin": 0.25})
    assert torch.equal(calibrated.decoder.class_branches[1].last.bias, dec.class_branches[1].last.bias)
    with torch.no_grad():
        torch.testing.assert_close(calibrated(x)["sem_logits"][:, k], out[:, k] + 0.25, atol=1e-5, rtol=0)

    # the fit's cache of a fresh lower branch beside the live one
    fresh = _with_class_branch(one, ("skin",), stride=4, seed=None, mode="lower")
    data = write_tiny_data(tmp_path / "data")
    img = np.asarray(np.random.default_rng(2).integers(0, 255, (64, 96, 3)), np.uint8)
    lab, inst_known = map_labels("camvid", np.zeros((64, 96), np.uint8), None)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    (e,) = cache_records(fresh, [Record("camvid", "x", img, lab, inst_known)], mean, std, ("skin",), stride=1)
    (e_plain,) = cache_records(plain, [Record("camvid", "x", img, lab, inst_known)], mean, std, ("skin",), stride=1)
    (e_one,) = cache_records(one, [Record("camvid", "x", img, lab, inst_known)], mean, std, ("skin",), stride=1)
    assert torch.equal(e.pooled[-1], e_plain.logits[0])                 # the input: the logit before the branches
    assert torch.equal(e.logits, e_one.logits)                          # added to: the output with the first branch
    assert float((e.logits.float() - e.pooled[-1:].float()).abs().mean()) > 1e-3
    assert "add_branch_residuals" not in vars(fresh.decoder)              # the cache restored the method

    src = tmp_path / "one.pt"
    save_checkpoint(src, one, one.cfg, mean=mean, std=std, extra={"class_branch:skin": {"first": True}})
    out_path = tmp_path / "low.pt"
    assert main(["--float", str(src), "--data", str(data), "--out", str(out_path), "--extra", "--lower-only",
                 "--classes", "skin", "--hidden", "8", "--stride", "4", "--steps", "3", "--batch", "2",
                 "--patch", "8"]) == 0
    _, meta = load_checkpoint(out_path)
    assert meta["config_obj"].class_branches == ((("skin",), 8, 4), (("skin",), 8, 4, "lower"))
    extra = read_checkpoint(out_path)["extra"]
    assert extra["class_branch:skin"] == {"first": True} and extra["class_branch:skin:lower"]["lower_only"]
    with pytest.raises(SystemExit, match="same mode"):  # a second "both" branch on skin is refused
        main(["--float", str(src), "--data", str(data), "--out", str(tmp_path / "x.pt"), "--extra",
              "--classes", "skin", "--hidden", "8", "--stride", "4", "--steps", "3"])


def test_the_shipped_int8_weights_quantise_back_to_themselves(tmp_path):
    """Further branches are fitted on the shipped file itself (it loads dequantised): ``ship.py`` must give its
    int8 values and scales back bit for bit, so the frozen model under a new branch is the shipped one."""
    from campipe.segmentation.checkpoint import read_checkpoint
    from campipe.segmentation.quantize import dequantize_state_dict, quantize_state_dict

    m = _with_class_branch(_live(_with_branch(calibrated_model(tiny_config(keep_dec_layers=2)), stride=4)), ("skin",))
    q = read_checkpoint(save_checkpoint(tmp_path / "q.pt", m, quantize=True))["state_dict"]
    back, _ = load_checkpoint(tmp_path / "q.pt")
    again = read_checkpoint(save_checkpoint(tmp_path / "q2.pt", back, quantize=True))["state_dict"]
    requant = quantize_state_dict(dequantize_state_dict(q))
    assert q.keys() == again.keys() == requant.keys()
    n = 0
    for key, v in q.items():
        for other in (again[key], requant[key]):
            if isinstance(v, dict):
                assert torch.equal(v["int8"], other["int8"]) and torch.equal(v["scale"], other["scale"]), key
                n += 1
            else:
                assert torch.equal(v, other), key
    assert n > 50
