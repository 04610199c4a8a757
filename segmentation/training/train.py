"""HyperDETR training loop: phases (reduced resolution, then a low-LR full-resolution fine-tune), AdamW, EMA
weights, periodic validation, resumable checkpoints outside the repository, deterministic sampling.

Config: a TOML file (``segmentation/configs/*.toml``)::

    [model]            # HyperDETRConfig overrides (aux_loss is forced on: every decoder layer is supervised)
    [data]             # dir, cache_dir, cache_max_side, teacher_dir, sampler (SamplerConfig fields),
                       # augment (AugmentConfig)
    [criterion]        # CriterionConfig fields
    [train]            # out_dir, seed, threads, device, amp, loader_workers, ema_decay, weight_decay, grad_clip,
                       # val_every_min, ckpt_every_min, trainable (parameter-name prefixes; the rest is frozen)...
    [[phase]]          # name, input_hw = [h, w], batch_size, lr, minutes (wall-clock budget) or steps, warmup_steps

Learning rate: linear warm-up, then cosine from ``lr`` to ``lr * min_lr_frac`` over the phase's budget. A phase given
in ``minutes`` schedules on elapsed training time (the CPU is shared, so a step count cannot be planned); one given in
``steps`` is fully reproducible. Batches are drawn from a generator seeded by ``(seed, phase, step)``, so a resumed
run continues the same sample stream.

Outputs in ``out_dir`` (never inside the repository): ``last.pt`` (resume state), ``log.jsonl`` (train/val logs),
``ema_float.pt`` (campipe checkpoint of the EMA weights, all decoder layers, float32) and ``ema_int8_l2.pt`` (int8,
pruned to 2 decoder layers: what ships).

CPU notes: ``torch.set_num_threads(threads)``, channels_last memory format (with the stride-32 projection and the
mask features made contiguous, which the transformer and the hyper-head need), augmentation in one prefetch thread.

Devices: ``device = "auto"`` (default) trains on the first CUDA GPU when PyTorch sees one and on the CPU otherwise,
so the same config simply runs faster on a GPU machine (phases budgeted in minutes then see more samples); ``amp =
"auto"`` means bfloat16 autocast on a GPU and float32 on the CPU (``"bf16"`` / ``"off"`` force it); ``loader_workers
= 0`` (auto) uses one augmentation thread on the CPU and up to 8 on a GPU machine. Losses, the Hungarian matching,
validation and the exported checkpoints stay float32; validation and export run on the CPU copy of the EMA weights.

References: DETR training recipe (AdamW, grad clipping, aux losses; facebookresearch/detr ``main.py``), Polyak
averaging / EMA of weights (as timm ``ModelEmaV2``), SGDR cosine schedule (Loshchilov & Hutter 2017).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import IMAGENET_MEAN, IMAGENET_STD, save_checkpoint
from ..config import HyperDETRConfig
from ..criterion import CriterionConfig, HyperDETRCriterion
from ..model import build_model
from .augment import AugmentConfig
from .batches import Prefetcher, Sampler, SamplerConfig, batch_to, finalize_batch
from .datasets import SETS, default_data_dir, load_cached


@dataclass
class Phase:
    name: str = "main"
    input_hw: tuple[int, int] = (256, 256)
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_frac: float = 0.03
    minutes: float | None = None
    steps: int | None = None
    warmup_steps: int = 200

    def __post_init__(self) -> None:
        self.input_hw = tuple(int(v) for v in self.input_hw)  # type: ignore[assignment]
        if (self.minutes is None) == (self.steps is None):
            raise ValueError(f"phase {self.name!r}: give exactly one of 'minutes' or 'steps'")
        if any(v % 32 for v in self.input_hw):
            raise ValueError(f"phase {self.name!r}: input_hw {self.input_hw} must be divisible by 32")


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    cache_dir: str | None = "/work/ckpt/cache"
    cache_max_side: int = 384
    teacher_dir: str | None = None  # teacher person maps for Figaro1k/LFW (segmentation/training/teacher.py)
    sets: tuple[str, ...] = SETS
    sampler: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    criterion: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "/work/ckpt/train"
    init_from: str | None = None  # float campipe checkpoint to start from (fine-tuning); ignored when resuming
    seed: int = 0
    threads: int = 2
    device: str = "auto"          # "auto" | "cpu" | "cuda" | "cuda:K"
    amp: str = "auto"             # "auto" | "bf16" | "off"
    loader_workers: int = 0       # augmentation threads; 0 = auto (1 on the CPU, up to 8 with a GPU)
    loader_processes: int = 0     # > 0: that many forked augmentation processes instead of threads (many-core GPU hosts)
    max_bad_steps: int = 10       # consecutive non-finite losses (each skipped) before the run stops with an error
    final_val: bool = True        # validate the EMA weights at the end (off where the validation images are absent)
    ema_decay: float = 0.999
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    val_every_min: float = 20.0
    val_limit: int = 40
    ckpt_every_min: float = 5.0
    log_every: int = 20
    trainable: tuple[str, ...] = ()  # parameter-name prefixes to train (e.g. transformer, query_embed, head); () = all
    phases: list[Phase] = field(default_factory=list)

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:  # a ValueError, which `campipe train` reports
            raise ValueError(f"{path}: invalid TOML: {e}") from None
        return cls.from_dict(d, path)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Any = "<dict>") -> "TrainConfig":
        d = copy.deepcopy(d)
        data, train = d.pop("data", {}), d.pop("train", {})
        phases = d.pop("phase", [])
        kw = {"model": d.pop("model", {}), "criterion": d.pop("criterion", {})}
        if d:
            raise ValueError(f"{source}: unknown sections {sorted(d)}")
        for k, v in data.items():
            kw[{"dir": "data_dir"}.get(k, k)] = v
        kw.update(train)
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise ValueError(f"{source}: unknown keys {bad}")
        kw["phases"] = [Phase(**p) for p in phases]
        if not kw["phases"]:
            raise ValueError(f"{source}: no [[phase]] defined")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d


def training_model_config(model: dict[str, Any]) -> HyperDETRConfig:
    """The architecture a run trains: the config's ``[model]`` overrides with ``aux_loss`` forced on."""
    return HyperDETRConfig.from_dict({**model, "aux_loss": True})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> the first CUDA GPU if PyTorch sees one, else the CPU; an explicit GPU that is not there is an
    error (never a silent fall-back to a 50x slower run)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device: unknown device {name!r} (use auto, cpu, cuda or cuda:K)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"train.device: {name!r} is not supported (use auto, cpu, cuda or cuda:K)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device is {name!r} but PyTorch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}); use device = \"auto\" or \"cpu\"")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"train.device is {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the forward pass: bfloat16 on a GPU with ``"auto"``, None (float32) on the CPU."""
    amp = (amp or "auto").strip().lower()
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"train.amp: {amp!r} (use auto, bf16 or off)")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def resolve_loader_workers(n: int, device: torch.device) -> int:
    if n < 0:
        raise ValueError(f"train.loader_workers must be >= 0 (0 = auto), got {n}")
    if n:
        return n
    return 1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def lr_at(phase: Phase, step: int, frac: float) -> float:
    """Warm-up over ``warmup_steps`` then cosine over the phase progress ``frac`` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, phase.warmup_steps))
    cos = phase.min_lr_frac + (1 - phase.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return phase.lr * warm * cos


class EMA:
    """Exponential moving average of all floating-point state (parameters and BN statistics)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # faster tracking at the start
        msd = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(msd[k].detach(), 1 - d)
            else:
                v.copy_(msd[k])


def make_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """channels_last for the convolutions; the transformer input and the hyper-head's mask features are made
    contiguous (their reshapes would otherwise copy with a slow path on CPU)."""
    model = model.to(memory_format=torch.channels_last)
    if not getattr(model, "_campipe_cl_hooks", False):
        model.input_proj.register_forward_hook(lambda m, a, out: out.contiguous())
        model.head.register_forward_pre_hook(lambda m, a: (a[0], a[1].contiguous()))
        model._campipe_cl_hooks = True
    return model


def freeze_except(model: torch.nn.Module, prefixes) -> int:
    """Train only the parameters whose name starts with one of ``prefixes`` (all of them when empty): every other
    parameter gets ``requires_grad = False`` and every BatchNorm left without a trainable parameter is put in eval
    mode, so its running statistics stay as loaded too (a frozen part then leaves training bit-identical, EMA
    included). Returns the number of trainable parameters; an unknown prefix is an error."""
    prefixes = tuple(prefixes or ())
    if not prefixes:
        return sum(p.numel() for p in model.parameters())
    def under(name: str, pre: str) -> bool:
        return name == pre or name.startswith(pre + ".")

    names = [n for n, _ in model.named_parameters()]
    for pre in prefixes:
        if not any(under(n, pre) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"train.trainable: no parameter under {pre!r} (top-level modules: {', '.join(tops)})")
    n_train = 0
    for n, p in model.named_parameters():
        keep = any(under(n, pre) for pre in prefixes)
        p.requires_grad_(keep)
        n_train += p.numel() if keep else 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and \
                not any(p.requires_grad for p in mod.parameters()):
            mod.eval()
    return n_train


def add_coord_weights(sd: dict[str, torch.Tensor], mask_dim: int) -> dict[str, torch.Tensor]:
    """State dict of a model without coordinate channels -> one with (config ``mask_coords``): the hyper-network's
    last layer gets zero rows for the 5 coordinate weights (inserted before the bias row), so the converted model
    computes exactly the same masks until training moves them."""
    from ..hyperdetr_head import COORD_DIM

    sd = dict(sd)
    last = max(int(k.split(".")[3]) for k in sd if k.startswith("head.hyper.layers."))
    for suffix in ("weight", "bias"):
        k = f"head.hyper.layers.{last}.{suffix}"
        t = sd[k]
        if t.shape[0] != mask_dim + 1:
            raise ValueError(f"{k}: expected {mask_dim + 1} rows (mask weights + bias), found {t.shape[0]}")
        zeros = torch.zeros((COORD_DIM,) + tuple(t.shape[1:]), dtype=t.dtype)
        sd[k] = torch.cat([t[:mask_dim], zeros, t[mask_dim:]])
    return sd


def init_weights(model: torch.nn.Module, mcfg: HyperDETRConfig, path: Path) -> None:
    """Load a campipe checkpoint's weights (dequantised) into ``model``; the architectures must match."""
    from ..checkpoint import read_checkpoint
    from ..quantize import dequantize_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"init_from checkpoint not found: {path}")
    ck = read_checkpoint(path)
    src = HyperDETRConfig.from_dict(dict(ck["config"]))
    for k in ("width_mult", "hidden_dim", "mask_dim", "num_queries", "dec_layers", "enc_layers", "mask_stride"):
        if getattr(src, k) != getattr(mcfg, k):
            raise ValueError(f"init_from {path}: model.{k} is {getattr(src, k)} there, {getattr(mcfg, k)} here")
    if src.active_dec_layers != mcfg.active_dec_layers:  # e.g. the shipped file: 6 layers trained, 2 kept
        raise ValueError(f"init_from {path}: the file holds {src.active_dec_layers} of its {src.dec_layers} decoder "
                         f"layers, this model builds {mcfg.active_dec_layers}; set model.keep_dec_layers = "
                         f"{src.active_dec_layers} to train from it")
    sd = dequantize_state_dict(ck["state_dict"])
    if mcfg.mask_coords and not src.mask_coords:
        sd = add_coord_weights(sd, mcfg.mask_dim)
    elif src.mask_coords and not mcfg.mask_coords:
        raise ValueError(f"init_from {path}: its masks read coordinate channels (mask_coords); this model's do not")
    if src.sem_head_hidden and src.sem_head_hidden != mcfg.sem_head_hidden:
        raise ValueError(f"init_from {path}: model.sem_head_hidden is {src.sem_head_hidden} there, "
                         f"{mcfg.sem_head_hidden} here")
    for k in ("sky_head_hidden", "sky_head_stride", "sky_head_classes"):  # same shapes would load silently
        if src.sky_head_hidden and getattr(src, k) != getattr(mcfg, k):
            raise ValueError(f"init_from {path}: model.{k} is {getattr(src, k)} there, {getattr(mcfg, k)} here")
    if src.class_branches and src.class_branches != mcfg.class_branches:
        raise ValueError(f"init_from {path}: model.class_branches is {src.class_branches} there, "
                         f"{mcfg.class_branches} here")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if mcfg.sem_head_hidden and not src.sem_head_hidden:  # a 1x1-head model: the new branch keeps its zero start
        missing = [k for k in missing if not k.startswith("decoder.sem_branch.")]
    if mcfg.sky_head_hidden and not src.sky_head_hidden:  # likewise a new sky branch
        missing = [k for k in missing if not k.startswith("decoder.sky_branch.")]
    if mcfg.class_branches and not src.class_branches:  # and new class branches
        missing = [k for k in missing if not k.startswith("decoder.class_branches.")]
    if missing or unexpected:
        raise ValueError(f"init_from {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_records(cfg: TrainConfig, split: str = "train", log=print) -> dict:
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir} (pass --data or set data.dir)")
    if cfg.teacher_dir and not Path(cfg.teacher_dir).is_dir():
        raise FileNotFoundError(f"teacher_dir not found: {cfg.teacher_dir} (write it with "
                                f"segmentation/training/teacher.py predict, or unset data.teacher_dir)")
    recs = {}
    for s in cfg.sets:
        t = time.time()
        recs[s] = load_cached(data_dir, s, split, cfg.cache_max_side, Path(cfg.cache_dir) if cfg.cache_dir else None,
                              threads=cfg.threads, teacher_dir=Path(cfg.teacher_dir) if cfg.teacher_dir else None)
        log(f"loaded {s}/{split}: {len(recs[s])} samples in {time.time() - t:.1f}s")
    return recs


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def export_weights(model: torch.nn.Module, cfg_model: HyperDETRConfig, out_dir: Path, metrics: dict | None = None,
                   extra: dict | None = None) -> tuple[Path, Path]:
    """Write the EMA model as campipe checkpoints: float (all layers) and int8 pruned to 2 decoder layers."""
    m = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    f32 = save_checkpoint(out_dir / "ema_float.pt", m, cfg_model, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          metrics=metrics, extra=extra)
    keep = min(2, cfg_model.dec_layers)
    q = save_checkpoint(out_dir / "ema_int8_l2.pt", m, cfg_model, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        metrics=metrics, extra=extra, quantize=True, keep_dec_layers=keep)
    return f32, q


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, log_fn=None) -> dict:
    """Run (or resume) the training described by ``cfg``. Returns a summary dict (paths, steps, last val)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.jsonl", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        (log_fn or print)(line)
        sys.stdout.flush()

    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    workers = resolve_loader_workers(cfg.loader_workers, device)
    if cfg.loader_processes < 0:
        raise ValueError(f"train.loader_processes must be >= 0, got {cfg.loader_processes}")
    procs = cfg.loader_processes
    torch.set_num_threads(max(1, cfg.threads))
    import cv2

    cv2.setNumThreads(1)  # augmentation runs in prefetch threads; no OpenCV thread pool on a shared CPU
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    mcfg = training_model_config(cfg.model)
    model = make_channels_last(build_model(mcfg).to(device)).train()  # before the optimiser sees the parameters
    n_trainable = freeze_except(model, cfg.trainable)
    criterion = HyperDETRCriterion(mcfg.semantic_classes, CriterionConfig(**cfg.criterion)).to(device)
    scene_only = criterion.cfg.w_inst == 0  # no instance term: the transformer need not run
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or n.endswith(".bias") or "query_embed" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.phases[0].lr)
    state = {"phase": 0, "step": 0, "global_step": 0, "elapsed": 0.0}
    last = out / "last.pt"
    if cfg.init_from and not (resume and last.exists()):
        init_weights(model, mcfg, Path(cfg.init_from))
        log(f"initialised from {cfg.init_from}")
    ema = EMA(model, cfg.ema_decay)
    if resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.module.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log(f"resumed from {last}: phase {state['phase']} step {state['step']} ({state['elapsed'] / 60:.1f} min)")
    log(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"{'bf16 autocast' if amp_dtype else 'float32'}, "
        f"{f'{procs} loader process(es)' if procs else f'{workers} loader thread(s)'}, {cfg.threads} torch thread(s)")
    if cfg.trainable:
        log(f"training only {', '.join(cfg.trainable)}: {n_trainable / 1e6:.2f} M parameters; the rest is frozen")

    recs = load_records(cfg, "train", log)
    sampler = Sampler(recs, SamplerConfig(**cfg.sampler), AugmentConfig(**cfg.augment))
    from .evaluate import evaluate_model  # evaluation lives in training, never imported by model code

    stop = {"flag": False}

    def _sig(signum, frame):  # save and exit cleanly on SIGTERM / SIGINT
        stop["flag"] = True

    old_term = signal.signal(signal.SIGTERM, _sig)
    old_int = signal.signal(signal.SIGINT, _sig)

    def save(tag: str = "") -> None:
        _save_state(last, {"model": model.state_dict(), "ema": ema.module.state_dict(), "opt": opt.state_dict(),
                           "state": state, "config": cfg.to_dict()})
        if tag:
            log(f"checkpoint saved ({tag})")

    val_results = None
    try:
        while state["phase"] < len(cfg.phases) and not stop["flag"]:
            ph = cfg.phases[state["phase"]]
            pi = state["phase"]
            log(f"phase {pi} '{ph.name}': {ph.input_hw} bs {ph.batch_size} lr {ph.lr} "
                f"{f'{ph.minutes} min' if ph.minutes else f'{ph.steps} steps'}")
            mean, std = IMAGENET_MEAN, IMAGENET_STD

            def make(step, ph=ph, pi=pi):
                rng = np.random.default_rng([cfg.seed, pi, step])
                return sampler.batch(rng, ph.batch_size, ph.input_hw, mean, std, compact=procs > 0)

            pf = Prefetcher(make, state["step"], workers=workers, pin_memory=device.type == "cuda", processes=procs)
            t_last_ckpt = t_last_val = time.time()
            t0, e0 = time.time(), state["elapsed"]
            budget = ph.minutes * 60 if ph.minutes else None
            agg: dict[str, float] = {}
            bad_steps = 0
            n_img_window, t_window = 0, time.time()
            prog = None
            if progress:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
                prog = Progress(TextColumn(f"[bold]{ph.name}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
                prog.start()
                task = prog.add_task(ph.name, total=1.0, info="")
            try:
                while not stop["flag"]:
                    elapsed = e0 + time.time() - t0
                    frac = elapsed / budget if budget else state["step"] / ph.steps
                    if frac >= 1.0:
                        break
                    step, batch = pf.get()
                    assert step == state["step"]
                    lr = lr_at(ph, step, frac)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    if device.type != "cpu":
                        batch = batch_to(batch, device, non_blocking=True)
                    if procs:
                        batch = finalize_batch(batch, mean, std)
                    x = batch["image"].contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        outputs = model(x, scene_only=scene_only)
                    loss, logs = criterion(outputs, batch)
                    opt.zero_grad(set_to_none=True)
                    if not math.isfinite(logs["loss"]):
                        # one bad step is skipped (no update, the EMA untouched); a run that keeps failing stops
                        bad_steps += 1
                        log(f"non-finite loss at phase {pi} step {step}: step skipped ({bad_steps} in a row)")
                        if bad_steps >= cfg.max_bad_steps:
                            raise FloatingPointError(f"loss is {logs['loss']} at phase {pi} step {step} "
                                                     f"({bad_steps} non-finite steps in a row)")
                        state["step"] += 1
                        state["global_step"] += 1
                        continue
                    bad_steps = 0
                    if loss.requires_grad:  # False only when every trained part is frozen out of this batch's loss
                        loss.backward()
                        if cfg.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        opt.step()
                        ema.update(model, state["global_step"])
                    state["step"] += 1
                    state["global_step"] += 1
                    state["elapsed"] = e0 + time.time() - t0
                    n_img_window += ph.batch_size
                    for k, v in logs.items():
                        agg[k] = agg.get(k, 0.0) + v
                    if state["step"] % cfg.log_every == 0:
                        ips = n_img_window / max(1e-6, time.time() - t_window)
                        avg = {k: v / cfg.log_every for k, v in agg.items()}
                        rec = {"kind": "train", "phase": pi, "step": state["step"], "gstep": state["global_step"],
                               "elapsed_min": state["elapsed"] / 60, "lr": lr, "img_s": ips, **avg}
                        logf.write(json.dumps(rec) + "\n")
                        logf.flush()
                        info = f"loss {avg['loss']:.3f} sem {avg['sem_bce']:.3f}/{avg['sem_dice']:.3f} " \
                               f"inst {avg.get('inst', 0):.3f} lr {lr:.2e} {ips:.1f} img/s"
                        if prog is not None:
                            prog.update(task, completed=min(1.0, frac), info=info)
                        if prog is None or not sys.stdout.isatty():
                            log(f"p{pi} step {state['step']} ({state['elapsed'] / 60:.1f} min) {info}")
                        agg, n_img_window, t_window = {}, 0, time.time()
                    if time.time() - t_last_ckpt > cfg.ckpt_every_min * 60:
                        save()
                        t_last_ckpt = time.time()
                    if cfg.val_every_min > 0 and time.time() - t_last_val > cfg.val_every_min * 60:
                        val_results = _validate(ema.module, mcfg, cfg, logf, log, state, evaluate_model)
                        t_last_val = time.time()
            finally:
                pf.close()
                if prog is not None:
                    prog.stop()
            if stop["flag"]:
                break
            state["phase"] += 1
            state["step"] = 0
            state["elapsed"] = 0.0
            save(f"end of phase {pi}")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    save("interrupted" if stop["flag"] else "final")
    summary = {"out_dir": str(out), "state": state, "interrupted": stop["flag"]}
    if not stop["flag"]:
        if cfg.final_val:
            val_results = _validate(ema.module, mcfg, cfg, logf, log, state, evaluate_model)
        f32, q = export_weights(ema.module, mcfg, out, metrics=_flat_metrics(val_results),
                                extra={"train_config": cfg.to_dict(), "global_step": state["global_step"]})
        summary.update(float_checkpoint=str(f32), int8_checkpoint=str(q))
        log(f"exported {f32} and {q}")
    logf.close()
    summary["val"] = val_results
    return summary


def _flat_metrics(res: dict | None) -> dict:
    if not res:
        return {}
    return {f"{s}/{k}": v for s, r in res.items() for k, v in r.items() if isinstance(v, (int, float))}


def _validate(model, mcfg, cfg, logf, log, state, evaluate_model) -> dict:
    t = time.time()
    m = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    res = evaluate_model(m, data_dir, sets=cfg.sets, split="val", limit=cfg.val_limit,
                         input_size=mcfg.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    logf.write(json.dumps({"kind": "val", "gstep": state["global_step"], "phase": state["phase"],
                           "limit": cfg.val_limit, "results": res}) + "\n")
    logf.flush()
    brief = " ".join(f"{s}:" + ",".join(f"{k}={v:.3f}" for k, v in r.items() if k.startswith("iou_") or k == "pq")
                     for s, r in res.items())
    log(f"val (EMA, {cfg.val_limit}/set, {time.time() - t:.0f}s): {brief}")
    return res


def export_last(out_dir: str | Path) -> tuple[Path, Path]:
    """Export the EMA weights of ``out_dir/last.pt`` (a run that was stopped or cut before its end) as
    ``ema_float.pt`` and ``ema_int8_l2.pt``; the training state (phase, step, elapsed) goes to ``extra["partial"]``."""
    d = Path(out_dir)
    if not (d / "last.pt").is_file():
        raise FileNotFoundError(f"no training checkpoint {d / 'last.pt'}")
    ck = torch.load(d / "last.pt", map_location="cpu", weights_only=False)
    mcfg = training_model_config(ck["config"]["model"])
    m = build_model(mcfg)
    m.load_state_dict(ck["ema"])
    return export_weights(m, mcfg, d, extra={"partial": ck["state"]})


def main(argv: list[str] | None = None) -> int:
    """``python -m campipe.segmentation.training.train CONFIG.toml [--no-resume] [--out DIR] [--data DIR]
    [--export-last]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--export-last", action="store_true", help="only export the EMA weights of OUT/last.pt")
    a = ap.parse_args(argv)
    cfg = TrainConfig.from_toml(a.config)
    if a.out:
        cfg.out_dir = a.out
    if a.export_last:
        print(*export_last(cfg.out_dir))
        return 0
    if a.data:
        cfg.data_dir = a.data
    s = train(cfg, resume=not a.no_resume, progress=not a.no_progress)
    print(json.dumps({k: v for k, v in s.items() if k != "val"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
