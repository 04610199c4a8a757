"""On-disk mask cache (issue 8): segmentation results keyed by input content, model and parameters, so re-rendering
the same files (another style, another run, another machine on a shared file system) skips the network.

:class:`MaskCache` stores one ``.npz`` per key (see its docstring for the layout, atomic writes and LRU eviction);
:func:`_cached_pipeline` wraps a pipeline's ``segment`` stage with the cache of a :class:`campipe.batch.RenderJob`
(``cache_dir``/``cache_max_bytes``) and records ``hit``/``miss`` in ``frame.meta["_mask_cache"]``, which
:func:`campipe.batch.render_one` reports as ``FileResult.mask_cache``.

Split out of :mod:`campipe.batch`, which re-exports :class:`MaskCache`.

References: NumPy ``.npy`` format (``numpy.lib.format``) in a zip (``zipfile``, deflate); rename(2) for atomic
replacement; flock(2) for one evicting process at a time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .encode import TMP_MARK
from .manifest import _digest, model_hash

if TYPE_CHECKING:
    from .batch import RenderJob

log = logging.getLogger("campipe")

DEFAULT_CACHE_BYTES = 4 << 30


class MaskCache:
    """On-disk cache of segmentation results (issue 8), shared by concurrent runs and machines on one file system.

    One file per (input content hash, model hash, segment parameters, decode resolution):
    ``DIR/<2 hex>/<key>.npz``: a zip (deflate level 1) of ``.npy`` arrays (``mask_<name>`` and ``person_<i>`` as
    float16 (H, W) in [0, 1]) plus a JSON ``meta`` (scores, model info). Soft masks in float16 differ from the
    network's float32 by < 5e-4. Writes go to a temporary name and are renamed into place (readers never see a
    partial file; two runs computing the same key both write the same content); unreadable entries are misses.
    Size bound: after a write, if the folder exceeds ``max_bytes``, the least recently used entries (mtime, touched
    on every hit) are deleted down to 90 %, by one process at a time (non-blocking ``flock`` on ``DIR/.evict.lock``).
    """

    def __init__(self, folder: str | Path, max_bytes: int = 0):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes or DEFAULT_CACHE_BYTES)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def make_key(input_key: str, model: str, params: dict, half_size: bool) -> str:
        blob = json.dumps({"input": input_key, "model": model, "params": params, "half": bool(half_size), "v": 1},
                          sort_keys=True, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str, shape: tuple[int, int]):
        """(masks dict, persons list) or None. ``shape`` (H, W) must match (else a miss)."""
        from .frame import PersonInstance

        p = self.path(key)
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                masks = {k[5:]: z[k].astype(np.float32) for k in z.files if k.startswith("mask_")}
                persons = [PersonInstance(z[f"person_{i}"].astype(np.float32), float(sc))
                           for i, sc in enumerate(meta["scores"])]
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged entry is a miss, and is removed
            log.debug("mask cache: unreadable %s (%s)", p, e)
            try:
                p.unlink()
            except OSError:
                pass
            return None
        if any(m.shape != tuple(shape) for m in masks.values()) or any(q.mask.shape != tuple(shape) for q in persons):
            return None
        try:
            os.utime(p)  # LRU
        except OSError:
            pass
        return masks, persons, meta.get("segmentation")

    def put(self, key: str, masks: dict, persons: list, info: Any = None) -> None:
        import zipfile

        p = self.path(key)
        try:
            p.parent.mkdir(exist_ok=True)
            tmp = p.with_name(f".{p.name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                    def put_arr(name, arr):
                        with z.open(name + ".npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
                    for k, m in masks.items():
                        put_arr(f"mask_{k}", np.asarray(m, np.float16))
                    for i, q in enumerate(persons):
                        put_arr(f"person_{i}", np.asarray(q.mask, np.float16))
                    meta = {"scores": [float(q.score) for q in persons], "segmentation": info}
                    put_arr("meta", np.frombuffer(json.dumps(meta, default=str).encode(), np.uint8))
                os.replace(tmp, p)
            finally:
                if tmp.exists():
                    tmp.unlink()
        except OSError as e:  # a full or read-only cache never fails a render
            log.debug("mask cache: cannot store %s (%s)", p, e)
            return
        self.evict()

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*/*.npz"))

    def evict(self) -> int:
        """Delete least recently used entries while the cache is above its bound; returns how many were removed."""
        import fcntl

        entries = []
        for f in self.folder.glob("*/*.npz"):
            try:
                st = f.stat()
                entries.append((st.st_mtime, st.st_size, f))
            except OSError:
                continue
        total = sum(e[1] for e in entries)
        if total <= self.max_bytes:
            return 0
        fd = os.open(self.folder / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        n = 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # another process is evicting
            for _, size, f in sorted(entries, key=lambda e: e[0]):
                if total <= 0.9 * self.max_bytes:
                    break
                try:
                    f.unlink()
                    total -= size
                    n += 1
                except OSError:
                    pass
        finally:
            os.close(fd)
        return n


_CACHED_PIPELINES: dict[tuple, Any] = {}


def _cached_pipeline(pipeline, job: RenderJob):
    """``pipeline`` with its segment stage wrapped by the mask cache of ``job`` (memoised per process)."""
    import dataclasses

    if "segment" not in pipeline.names:
        return pipeline
    ck = (id(pipeline), job.cache_dir, job.cache_max_bytes)
    cached = _CACHED_PIPELINES.get(ck)
    if cached is None:
        cache = MaskCache(job.cache_dir, job.cache_max_bytes)
        model = model_hash(pipeline)
        stages = []
        for st in pipeline.stages:
            if st.name == "segment":
                spec = dataclasses.replace(st.spec, fn=_caching_segment(st.spec.fn, cache, model))
                st = dataclasses.replace(st, spec=spec)
            stages.append(st)
        cached = _CACHED_PIPELINES[ck] = (dataclasses.replace(pipeline, stages=stages), pipeline)
    _CURRENT["job"] = job
    return cached[0]


_CURRENT: dict[str, Any] = {}


def _caching_segment(fn, cache: MaskCache, model: str):
    def segment_with_cache(frame, **params):
        job = _CURRENT.get("job")
        src = frame.meta.get("source")
        if job is None or src is None or str(src) != str(job.input):
            return fn(frame, **params)
        key = cache.make_key(job.input_key or _digest(job.input), model, params, job.half_size)
        hit = cache.get(key, (frame.height, frame.width))
        if hit is not None:
            frame.masks, frame.persons = dict(hit[0]), list(hit[1])
            if hit[2] is not None:
                frame.meta["segmentation"] = hit[2]
            frame.meta["_mask_cache"] = "hit"
            return frame
        frame = fn(frame, **params)
        if frame.masks or frame.persons:  # no weights -> empty masks: nothing worth caching
            cache.put(key, frame.masks, frame.persons, frame.meta.get("segmentation"))
        frame.meta["_mask_cache"] = "miss"
        return frame

    return segment_with_cache


__all__ = ["DEFAULT_CACHE_BYTES", "MaskCache"]
