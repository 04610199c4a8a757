"""Hungarian matcher, criterion (known masks, per-layer instance losses) and a training step on a tiny batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from campipe.segmentation.criterion import HyperDETRCriterion, masked_bce_dice, resize_targets
from campipe.segmentation.matcher import cost_matrix, hungarian_match, match_cost

CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")


def test_match_cost_hand_made():
    cost = np.array([[4.0, 1.0, 3.0],
                     [2.0, 0.0, 5.0],
                     [3.0, 2.0, 2.0]])
    qi, ti = match_cost(cost)
    # optimum: q0->t1 (1), q1->t0 (2), q2->t2 (2) = 5 (greedy q1->t1 would give 0+3+... >= 6)
    assert dict(zip(qi.tolist(), ti.tolist())) == {0: 1, 1: 0, 2: 2}


def test_hungarian_match_finds_the_right_query():
    h = w = 16
    t = torch.zeros(2, h, w)
    t[0, :8] = 1
    t[1, 8:] = 1
    masks = torch.full((4, h, w), -8.0)
    masks[2, 8:] = 8.0   # query 2 predicts target 1
    masks[0, :8] = 8.0   # query 0 predicts target 0
    logits = torch.tensor([[3.0, -3.0]] * 4)
    qi, ti = hungarian_match(logits, masks, t)
    assert dict(zip(qi.tolist(), ti.tolist())) == {0: 0, 2: 1}
    c = cost_matrix(logits, masks, t)
    assert c.shape == (4, 2) and c[0, 0] < c[1, 0] and c[2, 1] < c[3, 1]


def test_no_targets_gives_empty_match():
    qi, ti = hungarian_match(torch.zeros(4, 2), torch.zeros(4, 8, 8), torch.zeros(0, 8, 8))
    assert qi.size == 0 and ti.size == 0


def _targets(b=2, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    sem = (torch.rand(b, 6, h, w, generator=g) > 0.5).float()
    known = torch.ones(b, 6, h, w)
    return sem, known


def test_known_mask_excludes_unlabelled_pixels():
    """Changing predictions where a class is unknown must not change the loss; where it is known it must."""
    sem, known = _targets()
    known[:, 2, :, :8] = 0  # hair unknown in the left half
    known[:, 0] = 0         # sky unknown everywhere
    crit = HyperDETRCriterion(CLASSES)
    logits = torch.zeros(2, 6, 16, 16)
    base, _ = crit.static_loss(logits, {"sem": sem, "known": known})
    changed = logits.clone()
    changed[:, 2, :, :8] = 5.0   # unknown hair region
    changed[:, 0] = -7.0         # unknown sky
    same, _ = crit.static_loss(changed, {"sem": sem, "known": known})
    assert torch.allclose(base, same, atol=1e-6)
    changed[:, 2, :, 8:] = 5.0   # known hair region
    diff, _ = crit.static_loss(changed, {"sem": sem, "known": known})
    assert abs(float(diff - base)) > 1e-3


def test_masked_bce_dice_exact_values():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    known = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    bce, dice, n = masked_bce_dice(logits, target, known, torch.ones(1))
    assert float(n[0]) == 2
    assert abs(float(bce) - np.log(2)) < 1e-6
    # p = 0.5 on the 2 known pixels, t = [1, 0] -> dice = 1 - (2*0.5 + 1) / (1 + 1 + 1)
    assert abs(float(dice) - (1 - 2.0 / 3.0)) < 1e-6


def test_rare_class_weight_counts_more():
    sem, known = _targets()
    logits = torch.zeros(2, 6, 16, 16)
    logits_bad = logits.clone()
    logits_bad[:, 4] = -4.0 * (2 * sem[:, 4] - 1)  # confidently wrong teeth
    crit1 = HyperDETRCriterion(CLASSES)
    crit0 = HyperDETRCriterion(CLASSES, __import__("campipe.segmentation.criterion", fromlist=["x"]).CriterionConfig(
        class_weights={c: 1.0 for c in CLASSES}))
    d1 = crit1.static_loss(logits_bad, {"sem": sem, "known": known})[0] - crit1.static_loss(
        logits, {"sem": sem, "known": known})[0]
    d0 = crit0.static_loss(logits_bad, {"sem": sem, "known": known})[0] - crit0.static_loss(
        logits, {"sem": sem, "known": known})[0]
    assert float(d1) > float(d0) > 0


def test_resize_targets_known_is_conservative():
    k = torch.ones(1, 1, 4, 4)
    k[0, 0, 0, 0] = 0
    r = resize_targets(k, (2, 2), "all")
    assert r[0, 0, 0, 0] == 0 and r[0, 0, 1, 1] == 1


def test_instance_loss_uses_every_layer_and_skips_unknown_images():
    crit = HyperDETRCriterion(CLASSES)
    b, n, h, w = 2, 4, 8, 8
    sem, known = _targets(b, h, w)
    inst = [torch.zeros(1, h, w), torch.zeros(0, h, w)]
    inst[0][0, :4] = 1
    tg = {"sem": sem, "known": known, "instances": inst, "inst_valid": torch.ones(b, h, w),
          "inst_known": torch.tensor([True, False])}
    out = {"sem_logits": torch.zeros(b, 6, h, w), "pred_logits": torch.zeros(b, n, 2),
           "pred_masks": torch.zeros(b, n, h, w, requires_grad=True)}
    aux_masks = torch.zeros(b, n, h, w, requires_grad=True)
    out["aux_outputs"] = [{"pred_logits": torch.zeros(b, n, 2), "pred_masks": aux_masks}]
    loss, logs = crit(out, tg)
    loss.backward()
    assert logs["inst"] > 0
    assert aux_masks.grad is not None and aux_masks.grad[0].abs().sum() > 0   # earlier layer supervised
    assert aux_masks.grad[1].abs().sum() == 0  # image without complete instance labels: no instance loss


def _tiny_cfg():
    from campipe.segmentation.config import HyperDETRConfig

    return HyperDETRConfig(width_mult=0.35, hidden_dim=32, nheads=2, dim_feedforward=64, enc_layers=1,
                           dec_layers=2, mask_dim=8, input_size=(64, 64), mask_stride=2,
                           decoder_dims=(16, 16, 16, 16), aux_loss=True)


def test_training_steps_reduce_loss_on_tiny_batch():
    from campipe.segmentation.model import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(_tiny_cfg()).train()
    crit = HyperDETRCriterion(CLASSES)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    sem = torch.zeros(2, 6, 64, 64)
    sem[:, 0, :20] = 1
    sem[:, 1, 30:, 16:48] = 1
    x[:, 2, :20] += 2.0  # sky is bright blue: learnable
    inst = [sem[0, 1:2].clone(), sem[1, 1:2].clone()]
    tg = {"sem": sem, "known": torch.ones_like(sem), "instances": inst, "inst_valid": torch.ones(2, 64, 64),
          "inst_known": torch.tensor([True, True])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = crit(model(x), tg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0]


def test_criterion_rejects_unknown_class_weight():
    from campipe.segmentation.criterion import CriterionConfig

    with pytest.raises(ValueError, match="unknown classes"):
        HyperDETRCriterion(CLASSES, CriterionConfig(class_weights={"cats": 2.0}))


def test_pos_weight_exact_and_only_on_positives():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    known = torch.ones_like(target)
    bce1, _, _ = masked_bce_dice(logits, target, known, torch.ones(1))
    bce4, _, _ = masked_bce_dice(logits, target, known, torch.ones(1), torch.tensor([4.0]))
    # 2 positives weigh 4x, 2 negatives 1x: mean = (4 + 4 + 1 + 1) / 4 * log 2
    assert abs(float(bce4) - 2.5 * np.log(2)) < 1e-6
    assert abs(float(bce1) - np.log(2)) < 1e-6
    # all-negative targets: the positive weight changes nothing
    zero = torch.zeros_like(target)
    a = masked_bce_dice(logits, zero, known, torch.ones(1))[0]
    b = masked_bce_dice(logits, zero, known, torch.ones(1), torch.tensor([4.0]))[0]
    assert abs(float(a) - float(b)) < 1e-7


def test_criterion_rejects_unknown_pos_weight():
    from campipe.segmentation.criterion import CriterionConfig

    with pytest.raises(ValueError, match="pos_weights names unknown classes"):
        HyperDETRCriterion(CLASSES, CriterionConfig(pos_weights={"cats": 2.0}))


def test_init_from_loads_weights_and_rejects_other_architecture(tmp_path):
    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.model import build_model
    from campipe.segmentation.training.train import init_weights

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    src = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "src.pt", src, cfg)
    torch.manual_seed(1)
    dst = build_model(cfg)
    init_weights(dst, cfg, path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    other = type(cfg).from_dict({**cfg.to_dict(), "mask_dim": cfg.mask_dim * 2})
    with pytest.raises(ValueError, match="mask_dim"):
        init_weights(build_model(other), other, path)
    with pytest.raises(FileNotFoundError):
        init_weights(dst, cfg, tmp_path / "missing.pt")


def test_init_from_a_pruned_file_needs_keep_dec_layers(tmp_path):
    """The shipped file keeps 2 of 6 trained decoder layers: training from it builds the same 2 layers
    (model.keep_dec_layers), and a model building all layers is refused with that hint, not a key dump."""
    from campipe.segmentation.checkpoint import save_checkpoint
    from campipe.segmentation.model import build_model
    from campipe.segmentation.training.train import init_weights

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    assert cfg.dec_layers >= 2
    src = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "pruned.pt", src, cfg, quantize=True, keep_dec_layers=1)
    with pytest.raises(ValueError, match="keep_dec_layers = 1"):
        init_weights(build_model(cfg), cfg, path)
    kept = type(cfg).from_dict({**cfg.to_dict(), "keep_dec_layers": 1})
    dst = build_model(kept)
    init_weights(dst, kept, path)
    assert dst.num_dec_layers == 1
    w_src = src.state_dict()["transformer.decoder.0.linear1.weight"]
    w_dst = dst.state_dict()["transformer.decoder.0.linear1.weight"]
    assert torch.allclose(w_src, w_dst, atol=float(w_src.abs().max()) / 127 * 0.51)  # int8 per-channel round trip
    assert not torch.equal(w_dst, build_model(kept).state_dict()["transformer.decoder.0.linear1.weight"])


def test_batched_matching_equals_per_image_matching():
    from campipe.segmentation.matcher import hungarian_match_many

    g = torch.Generator().manual_seed(3)
    items = []
    for t in (0, 1, 3, 5, 2):  # number of targets per image (5 > N = 4 queries)
        lg = torch.randn(4, 2, generator=g)
        pm = torch.randn(4, 24, 32, generator=g)
        tm = (torch.rand(t, 24, 32, generator=g) > 0.6).float()
        v = (torch.rand(24, 32, generator=g) > 0.1).float()
        items.append((lg, pm, tm, v))
    many = hungarian_match_many(items, max_points=300, w_class=2.0, w_bce=5.0, w_dice=5.0)
    for (lg, pm, tm, v), (qi, ti) in zip(items, many):
        q1, t1 = hungarian_match(lg, pm, tm, v, max_points=300, w_class=2.0, w_bce=5.0, w_dice=5.0)
        assert np.array_equal(qi, q1) and np.array_equal(ti, t1)
        assert len(qi) == min(4, tm.shape[0])


def _instance_loss_reference(crit, pred_logits, pred_masks, tgts, valid, inst_known):
    """The per-image formulation (DETR's SetCriterion written image by image): the vectorised loss must equal it."""
    import torch.nn.functional as F

    from campipe.segmentation.criterion import _mask_losses

    c = crit.cfg
    idx = [i for i in range(pred_logits.shape[0]) if bool(inst_known[i])]
    ce_sum = bce_sum = dice_sum = pred_masks.sum() * 0.0
    n_inst = 0
    for i in idx:
        qi, ti = hungarian_match(pred_logits[i], pred_masks[i], tgts[i], valid[i], w_class=c.w_class,
                                 w_bce=c.w_mask_bce, w_dice=c.w_mask_dice)
        labels = torch.ones(pred_logits.shape[1], dtype=torch.long)
        labels[torch.as_tensor(qi, dtype=torch.long)] = 0
        ce_sum = ce_sum + F.cross_entropy(pred_logits[i], labels, weight=crit.ce_w)
        if len(qi):
            b, d = _mask_losses(pred_masks[i, qi], tgts[i][ti], valid[i][None])
            bce_sum, dice_sum, n_inst = bce_sum + b, dice_sum + d, n_inst + len(qi)
    n_inst = max(n_inst, 1)
    ce, bce, dice = ce_sum / len(idx), bce_sum / n_inst, dice_sum / n_inst
    return c.w_class * ce + c.w_mask_bce * bce + c.w_mask_dice * dice


def test_vectorised_instance_loss_equals_per_image_reference():
    g = torch.Generator().manual_seed(11)
    crit = HyperDETRCriterion(CLASSES)
    b, n, h, w = 5, 4, 12, 16
    counts = (2, 0, 5, 1, 3)
    tgts = [(torch.rand(t, h, w, generator=g) > 0.5).float() for t in counts]
    valid = (torch.rand(b, h, w, generator=g) > 0.15).float()
    known = torch.tensor([True, True, True, False, True])
    lg_a = torch.randn(b, n, 2, generator=g, requires_grad=True)
    pm_a = torch.randn(b, n, h, w, generator=g, requires_grad=True)
    lg_b = lg_a.detach().clone().requires_grad_(True)
    pm_b = pm_a.detach().clone().requires_grad_(True)
    got, logs = crit.instance_loss_layer(lg_a, pm_a, tgts, valid, known)
    ref = _instance_loss_reference(crit, lg_b, pm_b, tgts, valid, known)
    assert abs(got.item() - ref.item()) < 1e-5 * max(1.0, abs(ref.item()))
    got.backward()
    ref.backward()
    assert torch.allclose(pm_a.grad, pm_b.grad, atol=1e-6) and torch.allclose(lg_a.grad, lg_b.grad, atol=1e-6)
    assert pm_a.grad[3].abs().sum() == 0  # the image without complete instance labels takes no part
    assert set(logs) == {"inst_ce", "inst_bce", "inst_dice"}
