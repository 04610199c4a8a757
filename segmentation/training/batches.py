"""Sampling and batching: records -> augmented, normalised torch batches, produced ahead by prefetch threads.

Sampling (per batch element, from a generator seeded by ``(seed, phase, step)``, so a resumed run sees the same
stream): with probability ``synth_fraction`` a copy-paste scene (:mod:`.synth`), otherwise a set drawn by
``set_weights`` and a record of that set drawn by its oversampling weight (CelebAMask images with glasses x
``oversample_glasses``, with a visible inner mouth x ``oversample_teeth``). With probability ``p_twilight`` a sample
with labelled sky (CamVid, copy-paste scenes on CamVid) is re-lit as dusk first (:mod:`.twilight`; 0 = off, and the
random stream is then the same as before the option existed). With probability ``p_bgswap`` a drawn CelebAMask
portrait gets a new background (:func:`.synth.swap_background`, from a CamVid frame; 0 = off, same stream as
before).

Batch tensors (float32): ``image`` (B, 3, h, w) normalised sRGB; ``sem``/``known`` (B, C, h, w) in {0, 1};
``instances`` list of (T_i, h, w); ``inst_valid`` (B, h, w); ``inst_known`` (B,) bool. At most ``max_instances``
instances per image are kept (largest first); instances smaller than ``min_instance_px`` pixels after the crop and
the dropped ones are ignored by the instance loss (their pixels get inst_valid = 0).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import torch

from .augment import AugmentConfig, augment
from .datasets import GLASSES, TEETH, Record, unpack
from .synth import person_cutouts, swap_background, synth_scene
from .twilight import twilight


@dataclass
class SamplerConfig:
    set_weights: dict[str, float] = field(default_factory=lambda: {
        "celebamask": 1.0, "figaro1k": 0.7, "lfw_hair": 0.4, "camvid": 0.8, "pennfudan": 0.5})
    synth_fraction: float = 0.2
    oversample_glasses: float = 4.0
    oversample_teeth: float = 2.0
    teeth_min_fraction: float = 0.004  # inner-mouth pixels / image for the teeth oversampling
    max_instances: int = 4
    min_instance_px: int = 48
    p_twilight: float = 0.0            # dusk re-lighting of samples with labelled sky (see .twilight)
    p_bgswap: float = 0.0              # CelebAMask portraits with a replaced background (see .synth.swap_background)


class Sampler:
    """Draws (image, lab, inst_known) training samples; see module docstring."""

    def __init__(self, records: dict[str, list[Record]], cfg: SamplerConfig, aug: AugmentConfig | None = None):
        self.cfg = cfg
        self.aug = aug or AugmentConfig()
        self.records = {k: v for k, v in records.items() if v and cfg.set_weights.get(k, 0) > 0}
        if not self.records:
            raise ValueError("no training records: check the data directory and set_weights")
        self.names = sorted(self.records)
        w = np.array([cfg.set_weights[k] for k in self.names], np.float64)
        self.set_p = w / w.sum()
        self.rec_p = {}
        for k in self.names:
            rw = np.ones(len(self.records[k]))
            if k == "celebamask":
                for i, r in enumerate(self.records[k]):
                    sem = r.lab[..., 0]
                    if ((sem >> GLASSES) & 1).any():
                        rw[i] *= cfg.oversample_glasses
                    if ((sem >> TEETH) & 1).mean() >= cfg.teeth_min_fraction:
                        rw[i] *= cfg.oversample_teeth
            self.rec_p[k] = rw / rw.sum()
        self.backgrounds = self.records.get("camvid", [])
        self.backdrops = records.get("camvid", [])  # even when camvid's own set weight is 0
        if cfg.p_bgswap > 0 and not self.backdrops:
            raise ValueError("p_bgswap needs CamVid frames as backdrops; none are loaded")
        self.cutouts = person_cutouts([r for k in ("celebamask", "pennfudan") for r in self.records.get(k, [])])

    def draw(self, rng: np.random.Generator) -> Record:
        if self.cfg.synth_fraction > 0 and self.backgrounds and self.cutouts and rng.random() < self.cfg.synth_fraction:
            bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            return synth_scene(bg, self.cutouts, rng)
        k = self.names[int(rng.choice(len(self.names), p=self.set_p))]
        rec = self.records[k][int(rng.choice(len(self.records[k]), p=self.rec_p[k]))]
        if k == "celebamask" and self.cfg.p_bgswap > 0 and rng.random() < self.cfg.p_bgswap:
            rec = swap_background(rec, self.backdrops[int(rng.integers(len(self.backdrops)))], rng)
        return rec

    def batch(self, rng: np.random.Generator, batch_size: int, hw: tuple[int, int], mean, std,
              compact: bool = False) -> dict:
        """One augmented batch (see :func:`collate`; ``compact`` = uint8 tensors for :func:`finalize_batch`)."""
        imgs, labs, iks = [], [], []
        for _ in range(batch_size):
            r = self.draw(rng)
            image = r.image
            if self.cfg.p_twilight > 0 and rng.random() < self.cfg.p_twilight:
                image = twilight(image, r.lab, rng)
            im, lb = augment(image, r.lab, hw, rng, self.aug)
            imgs.append(im)
            labs.append(lb)
            iks.append(r.inst_known)
        return collate(np.stack(imgs), np.stack(labs), iks, mean, std, self.cfg.max_instances,
                       self.cfg.min_instance_px, compact=compact)


def collate(images: np.ndarray, labs: np.ndarray, inst_known, mean, std, max_instances: int = 4,
            min_instance_px: int = 48, compact: bool = False) -> dict:
    """uint8 images (B, h, w, 3) + packed labs (B, h, w, 3) -> batch dict of tensors (see module docstring).

    ``compact=True`` keeps every tensor uint8 (``image`` stays (B, h, w, 3) sRGB 0..255, not normalised; ``mean``
    and ``std`` are then unused): a quarter of the bytes to move between loader processes and to the GPU, where
    :func:`finalize_batch` makes the float32 batch. Both paths give the same batch (tested).
    """
    u = unpack(labs)  # sem/known: (C, B, h, w) because of the leading class axis
    sem = np.ascontiguousarray(u["sem"].transpose(1, 0, 2, 3))
    valid = u["valid"]
    known = np.ascontiguousarray(u["known"].transpose(1, 0, 2, 3)) * valid[:, None]
    inst_valid = (valid & (1 - u["inst_ignore"])).astype(np.float32)
    instances = []
    for b in range(images.shape[0]):
        ids, counts = np.unique(u["inst"][b], return_counts=True)
        keep = [(c, i) for i, c in zip(ids, counts) if i > 0]
        keep.sort(reverse=True)
        good = [i for c, i in keep[:max_instances] if c >= min_instance_px]
        bad = [i for c, i in keep if i not in good]
        if bad:
            inst_valid[b][np.isin(u["inst"][b], bad)] = 0
        tdt = np.uint8 if compact else np.float32
        instances.append(torch.from_numpy(np.stack([u["inst"][b] == i for i in good]).astype(tdt))
                         if good else torch.zeros((0,) + images.shape[1:3], dtype=torch.uint8 if compact else None))
    if compact:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(images)),
            "sem": torch.from_numpy(sem),
            "known": torch.from_numpy(known.astype(np.uint8)),
            "instances": instances,
            "inst_valid": torch.from_numpy(inst_valid.astype(np.uint8)),
            "inst_known": torch.tensor([bool(v) for v in inst_known]),
        }
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
        "sem": torch.from_numpy(sem.astype(np.float32)),
        "known": torch.from_numpy(known.astype(np.float32)),
        "instances": instances,
        "inst_valid": torch.from_numpy(inst_valid),
        "inst_known": torch.tensor([bool(v) for v in inst_known]),
    }


def finalize_batch(batch: dict, mean, std) -> dict:
    """A ``compact`` batch (uint8 tensors, on any device) -> the float32 batch of :func:`collate` on that device."""
    img = batch["image"]
    m = torch.as_tensor(mean, dtype=torch.float32, device=img.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=img.device).view(1, 3, 1, 1)
    x = (img.permute(0, 3, 1, 2).float() / 255.0 - m) / s
    return {**batch, "image": x.contiguous(), "sem": batch["sem"].float(), "known": batch["known"].float(),
            "instances": [t.float() for t in batch["instances"]], "inst_valid": batch["inst_valid"].float()}


class _StepBatches(torch.utils.data.Dataset):
    """Map-style view of ``make(start + i)`` for :class:`torch.utils.data.DataLoader` worker processes."""

    def __init__(self, make, start: int, length: int = 10 ** 9):
        self.make, self.start, self.length = make, start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.start + i, self.make(self.start + i)


def _worker_init(_):
    """One thread per loader process: OpenCV, torch and the BLAS behind NumPy's ``@`` (colour jitter) would otherwise
    each start a pool as large as the machine in every process."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn/scipy stacks, not required
        pass


class Prefetcher:
    """Produces batches ``make(step)`` for step = start, start+1, ... ahead of the training loop.

    ``workers`` threads build up to ``depth`` batches ahead (at least ``workers``); :meth:`get` returns them in step
    order, so the stream is the same whatever ``workers`` is (``make(step)`` must depend on the step only, as the
    seeded sampler does). One worker suits a 2-core CPU; on a GPU machine several keep the accelerator fed (OpenCV and
    most NumPy work release the GIL). ``pin_memory`` pins the batch tensors for asynchronous host-to-GPU copies.
    A loader error is re-raised by :meth:`get` at the step that failed. ``processes > 0`` builds the batches in that
    many forked worker processes instead (a :class:`torch.utils.data.DataLoader` over the step indices, same order,
    same batches): augmentation is Python + OpenCV and the GIL caps threads at a few cores, so a 16-core GPU machine
    needs processes to keep the accelerator fed.
    """

    def __init__(self, make, start: int, depth: int = 3, workers: int = 1, pin_memory: bool = False,
                 processes: int = 0):
        from concurrent.futures import ThreadPoolExecutor

        self.make, self.pin = make, pin_memory
        self.loader = None
        if processes > 0:
            # forked worker processes (a GPU machine's many cores; no GIL between the augmentations); the
            # DataLoader hands the batches back in index order, so the stream is the same as with threads
            self.loader = iter(torch.utils.data.DataLoader(
                _StepBatches(make, start), batch_size=None, shuffle=False, num_workers=processes,
                prefetch_factor=max(2, depth), pin_memory=pin_memory, worker_init_fn=_worker_init,
                multiprocessing_context="fork"))
            self.ex = None
            return
        self.ex = ThreadPoolExecutor(max(1, workers), thread_name_prefix="campipe-batches")
        self.depth = max(depth, workers)
        self.next_step = start
        self.pending: collections.deque = collections.deque()
        for _ in range(self.depth):
            self._submit()

    def _build(self, step: int) -> dict:
        batch = self.make(step)
        if self.pin:
            batch = {k: pin_batch_value(v) for k, v in batch.items()}
        return batch

    def _submit(self) -> None:
        self.pending.append((self.next_step, self.ex.submit(self._build, self.next_step)))
        self.next_step += 1

    def get(self):
        if self.loader is not None:
            step, batch = next(self.loader)
            return int(step), batch
        step, fut = self.pending.popleft()
        self._submit()
        return step, fut.result()  # re-raises the loader's exception here, in the training thread

    def close(self) -> None:
        if self.loader is not None:
            self.loader._shutdown_workers()
            self.loader = None
            return
        for _, fut in self.pending:
            fut.cancel()
        self.ex.shutdown(wait=False, cancel_futures=True)


def pin_batch_value(v):
    if isinstance(v, torch.Tensor):
        return v.pin_memory()
    if isinstance(v, list):
        return [pin_batch_value(t) for t in v]
    return v


def batch_to(batch: dict, device: torch.device, non_blocking: bool = False) -> dict:
    """Every tensor of a batch (including the per-image ``instances`` list) moved to ``device``."""
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=non_blocking)
        if isinstance(v, list):
            return [mv(t) for t in v]
        return v
    return {k: mv(v) for k, v in batch.items()}
