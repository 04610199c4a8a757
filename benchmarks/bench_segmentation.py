"""HyperDETR efficiency benchmark: scaling in N vs the DETR-panoptic head, runtimes, tiling, file sizes.

Prints tables and writes a plot PNG (``--plot``, default ``out/benchmarks/segmentation_scaling.png``, git-ignored)
and the raw numbers as JSON next to it. Not a test: numbers depend on the machine and its load (the load average is
printed).

Sections
1. Scaling (the figure): one forward pass at 384x512, eager PyTorch fp32, ``--threads`` threads (default 2), for
   N in {1, 2, 4, 8, 16, 32, 64, 100}: HyperDETR vs the DETR-panoptic head (same backbone + transformer, decoder
   pruned to 2 layers as shipped), plus HyperDETR ``scene_only``. Latency = median of ``--repeats`` (>= 5) runs after
   one warm-up (wall clock, and process CPU time: with ``--threads 1`` the CPU time is a load-independent measure of
   the compute, useful when other processes share the CPU); peak memory = peak RSS growth (VmHWM reset just before)
   during one forward pass, each configuration in a fresh subprocess. Also timed per N (unless ``--no-trunk``): the
   trunk both heads share (backbone, projection, transformer), which splits each forward into trunk + mask path and
   shows the bound the trunk puts on the whole-forward speed-up.
2. Runtimes at N=4: eager fp32, ONNX Runtime fp32, ONNX Runtime int8 QDQ (calibrated on ``--calib-images`` real
   photos from ../shared/data when present), and with ``--compile`` torch.compile + bf16 + channels_last; with the
   mean |dp| of the probabilities and the IoU of the 0.5-thresholded masks against eager fp32.
3. Decoder tiling (bands 1/2/4/8) at 384x512 and 768x1024: peak memory vs latency.
4. Weights file sizes: fp32, int8, int8 + decoder pruned 6 -> 2, with int8-vs-fp32 mask agreement.
5. ``interleaved``: ONNX Runtime fp32 (campipe's default runtime) on ``--weights`` and every ``--compare`` file,
   one call of each graph in turn, ``--repeats`` rounds (use >= 40): medians and minima per file, and the median of
   the per-round differences to the first file, which the machine's load drifts affect alike. This machine's
   neighbours move single medians by several ms between sittings (MODEL_CARD.md, twelfth session); the paired
   difference is the stable figure. Also prints the load average before and after.

Weights: the installed checkpoint if any (``--weights``), else a randomly initialised model (BatchNorm statistics
from noise) — valid for speed and memory; agreement numbers are then only indicative (the output says so).

Usage: ``python benchmarks/bench_segmentation.py [--quick] [--compile] [--repeats 5] [--threads 2]
[--runtime torch|onnx] [--mask-stride 1|2] [--weights CKPT] [--sections scaling,runtimes,tiling,sizes]``;
``python benchmarks/bench_segmentation.py --sections interleaved --weights A.pt --compare B.pt --repeats 80``

References: Carion et al. (DETR) §4.4 (panoptic head cost grows with N); the on-device HyperDETR write-up's scaling
figure (latency and memory flat in N).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from campipe.stagedump import memory_snapshot, reset_peak

HERE = Path(__file__).resolve().parent
NS = (1, 2, 4, 8, 16, 32, 64, 100)
SHARED = Path(os.environ.get("CAMPIPE_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def _rss_mb() -> float:
    """Current resident set, MiB."""
    return memory_snapshot()[1]


def _peak_mb() -> float:
    """Peak RSS (VmHWM) in MiB since the last :func:`reset_peak` (ru_maxrss if /proc is unavailable)."""
    return memory_snapshot()[0]


# ------------------------------------------------------------------------------------------------ worker ---

def worker(spec: dict) -> dict:
    """Run in a fresh process: build the model, measure peak RSS growth of one forward, then latency."""
    if spec.get("onnx_path"):  # step 2 of an ONNX measurement: a fresh process that only runs ONNX Runtime
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = spec["threads"], 1
        sess = ort.InferenceSession(spec["onnx_path"], so, providers=["CPUExecutionProvider"])
        feed = {"image": np.random.default_rng(0).standard_normal((1, 3, *spec["size"])).astype(np.float32)}
        base = _rss_mb()
        reset_peak()
        sess.run(None, feed)
        peak = _peak_mb() - base
        times, cpu = [], []
        for _ in range(spec["repeats"]):
            t, c = time.perf_counter(), time.process_time()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return {"ms": 1000 * float(np.median(times)), "ms_min": 1000 * min(times), "peak_mb": peak,
                "cpu_ms": 1000 * float(np.median(cpu))}
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)  # random-init weights can produce denormals; real photos + trained weights rarely
    from campipe.segmentation.config import HyperDETRConfig

    h, w = spec["size"]
    cfg = HyperDETRConfig(num_queries=spec["n"], keep_dec_layers=2, input_size=(h, w),
                          mask_stride=spec.get("mask_stride", 1))
    torch.manual_seed(0)
    if spec["head"] == "detr":
        from campipe.segmentation.panoptic_baseline import build_panoptic_baseline
        model = build_panoptic_baseline(cfg).eval()
        fwd = lambda x: model(x)  # noqa: E731
    elif spec["head"] == "trunk":
        from campipe.segmentation.model import build_model
        model = _Trunk(build_model(cfg)).eval()
        fwd = lambda x: model(x)  # noqa: E731
    else:
        from campipe.segmentation.model import build_model
        from campipe.segmentation.tiling import set_tiling
        model = set_tiling(build_model(cfg).eval(), spec.get("bands", 1))
        scene = spec["head"] == "scene"
        fwd = lambda x: model(x, scene_only=scene)  # noqa: E731
    x = torch.randn(1, 3, h, w)
    if spec.get("export_to"):  # step 1 of an ONNX measurement: export only (in its own process)
        from campipe.segmentation.export import OnnxWrapper

        class _Detr(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, t):
                o = self.m(t)
                return o["pred_logits"], o["pred_masks"]

        net = _Detr(model) if spec["head"] == "detr" else model if spec["head"] == "trunk" else \
            OnnxWrapper(model, spec["head"] == "scene")
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), spec["export_to"], dynamo=False, opset_version=18, input_names=["image"])
        return {}
    with torch.inference_mode():
        base = _rss_mb()
        reset_peak()
        fwd(x)  # first pass: peak memory (allocator state is fresh)
        peak = _peak_mb() - base
        times, cpu = [], []
        for _ in range(spec["repeats"]):
            t, c = time.perf_counter(), time.process_time()
            fwd(x)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return {"ms": 1000 * float(np.median(times)), "ms_min": 1000 * min(times), "peak_mb": peak,
            "cpu_ms": 1000 * float(np.median(cpu))}


def _Trunk(model):
    """The part both heads share: backbone, stride-32 projection, transformer (N queries) -> last decoder layer's
    query embeddings (B, N, C). Timing it beside both heads splits each forward into shared trunk + mask path."""
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            m = self.m
            p32 = m.input_proj(m.backbone(x)["s32"])
            hs, _ = m.transformer(p32, m.position(p32), m.query_embed.weight)
            return hs[-1]

    return Trunk(model)


def run_worker(spec: dict) -> dict:
    if spec.get("runtime") == "onnx" and not spec.get("onnx_path"):
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "m.onnx")
            _run_worker({**spec, "export_to": path})
            return _run_worker({**spec, "onnx_path": path})
    return _run_worker(spec)


def _run_worker(spec: dict) -> dict:
    code = ("import json,sys; sys.path.insert(0, %r); import bench_segmentation as b; "
            "print('RESULT' + json.dumps(b.worker(json.loads(sys.argv[1]))))" % str(HERE))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------------ sections ---

def scaling(args) -> list[dict]:
    rows = []
    for n in args.ns:
        for head in ("hyperdetr", "detr") + (("trunk",) if args.trunk else ()):
            r = run_worker({"head": head, "n": n, "size": [384, 512], "threads": args.threads,
                            "repeats": args.repeats, "mask_stride": args.mask_stride, "runtime": args.runtime})
            rows.append({"head": head, "n": n, **r})
            print(f"  {head:10s} N={n:<4d} {r['ms']:9.1f} ms  (min {r['ms_min']:8.1f})  cpu {r['cpu_ms']:9.1f} ms  "
                  f"peak +{r['peak_mb']:8.1f} MB", flush=True)
    r = run_worker({"head": "scene", "n": 4, "size": [384, 512], "threads": args.threads, "repeats": args.repeats,
                    "mask_stride": args.mask_stride, "runtime": args.runtime})
    rows.append({"head": "scene_only", "n": 0, **r})
    print(f"  scene_only        {r['ms']:9.1f} ms  (min {r['ms_min']:8.1f})  cpu {r['cpu_ms']:9.1f} ms  "
          f"peak +{r['peak_mb']:8.1f} MB")
    return rows


def load_or_random(args, tmp: Path):
    """(checkpoint path, is_random) — installed weights, or a random-init int8 checkpoint pruned to 2 layers."""
    from campipe.segmentation import NoWeightsError, weights_path

    try:
        return weights_path(args.weights), False
    except NoWeightsError:
        import torch

        from campipe.segmentation.checkpoint import save_checkpoint
        from campipe.segmentation.config import HyperDETRConfig
        from campipe.segmentation.model import build_model

        torch.manual_seed(0)
        m = build_model(HyperDETRConfig(mask_stride=args.mask_stride))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        m.train()
        with torch.no_grad():
            m(torch.randn(2, 3, 384, 512))
        m.eval()
        return save_checkpoint(tmp / "random.pt", m, metrics={"note": "random init (benchmark)"}), True


def real_images(k: int, offset: int = 0) -> list[Path]:
    files = sorted(SHARED.glob("*/images/*.jpg")) if SHARED.is_dir() else []
    return files[offset:: max(1, len(files) // max(k, 1))][:k] if files else []


def agreement(ref: dict, out: dict) -> tuple[float, float]:
    """Mean |dp| and IoU of thresholded masks over sem_logits + pred_masks."""
    from campipe.segmentation.postprocess import sigmoid

    dps, inter, union = [], 0, 0
    for k in ("sem_logits", "pred_masks"):
        a, b = sigmoid(ref[k]), sigmoid(out[k])
        dps.append(np.abs(a - b).mean())
        inter += np.logical_and(a > 0.5, b > 0.5).sum()
        union += np.logical_or(a > 0.5, b > 0.5).sum()
    return float(np.mean(dps)), float(inter / max(union, 1))


def runtimes(args, ckpt: Path, tmp: Path) -> list[dict]:
    import torch

    from campipe.segmentation.checkpoint import load_checkpoint
    from campipe.segmentation.export import (calibration_inputs, get_or_export, quantize_onnx_int8, weights_key)
    from campipe.segmentation.runtime import CompiledBF16Runner, OrtRunner, TorchRunner

    torch.set_num_threads(args.threads)
    os.environ.setdefault("CAMPIPE_CACHE", str(tmp / "cache"))
    model, meta = load_checkpoint(ckpt, keep_dec_layers=2)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    evals = real_images(args.eval_images, offset=7)
    xs = calibration_inputs(evals, meta["config_obj"], mean, std) if evals else \
        [np.random.default_rng(i).standard_normal((1, 3, 384, 512)).astype(np.float32) for i in range(3)]
    runners = [("eager fp32", lambda: TorchRunner(model, threads=args.threads))]
    fp32 = get_or_export(model, meta["sha256"])
    runners.append(("onnxruntime fp32", lambda: OrtRunner(fp32, args.threads)))
    calib_files = real_images(args.calib_images)
    if calib_files:
        def int8():
            t = time.perf_counter()
            calib = calibration_inputs(calib_files, meta["config_obj"], mean, std)
            q = quantize_onnx_int8(fp32, tmp / "int8.onnx", calib, weights_sha256=weights_key(meta["sha256"], 2))
            print(f"    (int8 calibration on {len(calib)} real photos: {time.perf_counter() - t:.0f} s)")
            return OrtRunner(q, args.threads, name="onnx-int8")
        runners.append((f"onnxruntime int8 QDQ ({len(calib_files)} calib photos)", int8))
    else:
        print("    (no ../shared/data: int8 QDQ skipped, it needs real calibration photos)")
    if args.compile:
        runners.append(("torch.compile bf16 channels_last", lambda: CompiledBF16Runner(model, threads=args.threads)))
    ref_runner = TorchRunner(model, threads=args.threads)
    refs = [ref_runner(x) for x in xs]
    rows = []
    for name, make in runners:
        t = time.perf_counter()
        r = make()
        r(xs[0])
        first = time.perf_counter() - t
        times, cpu = [], []
        for i in range(max(args.repeats, 5)):
            t, c = time.perf_counter(), time.process_time()
            r(xs[i % len(xs)])
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        dps, ious = zip(*[agreement(ref, r(x)) for ref, x in zip(refs, xs)])
        row = {"runtime": name, "ms": 1000 * float(np.median(times)), "ms_min": 1000 * min(times),
               "cpu_ms": 1000 * float(np.median(cpu)), "first_call_s": first, "mean_dp": float(np.mean(dps)),
               "iou": float(np.mean(ious))}
        rows.append(row)
        print(f"  {name:42s} {row['ms']:8.1f} ms (min {row['ms_min']:7.1f}, cpu {row['cpu_ms']:7.1f})  first call "
              f"{first:6.1f} s  mean|dp| {row['mean_dp']:.4f}  IoU {row['iou']:.4f}", flush=True)
    return rows


def interleaved(args, paths: list[Path], tmp: Path) -> list[dict]:
    """Section 5 (module docstring): ONNX Runtime fp32 graphs of ``paths`` timed in turn, ``args.repeats`` rounds."""
    from campipe.segmentation.checkpoint import load_checkpoint
    from campipe.segmentation.export import get_or_export
    from campipe.segmentation.runtime import OrtRunner

    os.environ.setdefault("CAMPIPE_CACHE", str(tmp / "cache"))
    runners = []
    for p in paths:
        model, meta = load_checkpoint(p, keep_dec_layers=2)
        runners.append(OrtRunner(get_or_export(model, meta["sha256"]), args.threads))
    x = np.random.default_rng(0).standard_normal((1, 3, *model.cfg.input_size)).astype(np.float32)
    for r in runners:
        for _ in range(3):
            r(x)
    times = np.zeros((args.repeats, len(runners)))
    for i in range(args.repeats):
        for j, r in enumerate(runners):
            t = time.perf_counter()
            r(x)
            times[i, j] = time.perf_counter() - t
    rows = []
    for j, p in enumerate(paths):
        row = {"weights": str(p), "ms": 1000 * float(np.median(times[:, j])), "ms_min": 1000 * float(times[:, j].min()),
               "paired_diff_ms": 1000 * float(np.median(times[:, j] - times[:, 0]))}
        rows.append(row)
        print(f"  {str(p)[-48:]:48s} {row['ms']:7.1f} ms (min {row['ms_min']:6.1f})  paired difference to the "
              f"first {row['paired_diff_ms']:+6.2f} ms", flush=True)
    return rows


def tiling_rows(args) -> list[dict]:
    rows = []
    for size in ([384, 512], [768, 1024]):
        for bands in (1, 2, 4, 8):
            r = run_worker({"head": "hyperdetr", "n": 4, "size": size, "threads": args.threads,
                            "repeats": args.repeats, "bands": bands, "mask_stride": args.mask_stride})
            rows.append({"size": size, "bands": bands, **r})
            print(f"  {size[0]}x{size[1]} bands={bands}  {r['ms']:8.1f} ms  cpu {r['cpu_ms']:8.1f} ms  "
                  f"peak +{r['peak_mb']:7.1f} MB", flush=True)
    return rows


def sizes(args, ckpt: Path, tmp: Path) -> dict:
    import torch

    from campipe.segmentation.checkpoint import load_checkpoint, save_checkpoint
    from campipe.segmentation.export import calibration_inputs

    model, meta = load_checkpoint(ckpt)
    out = {}
    for name, kw in (("fp32, 6 dec layers" if model.num_dec_layers == 6 else "fp32", {}),
                     ("int8", {"quantize": True}),
                     ("int8 + pruned to 2 dec layers",
                      {"quantize": True, "keep_dec_layers": min(2, model.num_dec_layers)})):
        p = save_checkpoint(tmp / f"{len(out)}.pt", model, mean=meta["normalization"]["mean"],
                            std=meta["normalization"]["std"], **kw)
        out[name] = p.stat().st_size / 1e6
    mq, _ = load_checkpoint(tmp / "1.pt")
    evals = real_images(args.eval_images, offset=3)
    xs = calibration_inputs(evals, meta["config_obj"], meta["normalization"]["mean"], meta["normalization"]["std"]) \
        if evals else [np.random.default_rng(9).standard_normal((1, 3, 384, 512)).astype(np.float32)]
    res = []
    with torch.inference_mode():
        for x in xs:
            a = {k: v.numpy() for k, v in model(torch.from_numpy(x)).items() if torch.is_tensor(v)}
            b = {k: v.numpy() for k, v in mq(torch.from_numpy(x)).items() if torch.is_tensor(v)}
            res.append(agreement(a, b))
    out["int8_vs_fp32_mean_dp"], out["int8_vs_fp32_iou"] = (float(np.mean([r[0] for r in res])),
                                                             float(np.mean([r[1] for r in res])))
    out["given_checkpoint_file_mb"] = ckpt.stat().st_size / 1e6
    return out


# ------------------------------------------------------------------------------------------------ plot ---

def plot(rows: list[dict], path: Path) -> None:
    """Two log-log panels (CPU time per forward -- load-robust -- and peak memory vs N), drawn with OpenCV (no
    matplotlib dependency)."""
    import cv2

    W, H, m = 1100, 480, 70
    img = np.full((H, W, 3), 255, np.uint8)
    colours = {"hyperdetr": (200, 90, 20), "detr": (30, 30, 210)}
    lat = ("cpu_ms", "CPU time per forward (ms)") if all("cpu_ms" in r for r in rows) else ("ms", "latency (ms)")
    for p, (key, title) in enumerate((lat, ("peak_mb", "peak memory (MB)"))):
        x0, x1, y0, y1 = m + p * W // 2, (p + 1) * W // 2 - 20, H - m, 50
        vals = [max(r[key], 1e-1) for r in rows if r["head"] in colours or r["head"] == "scene_only"]
        lo, hi = np.log10(min(vals)) - 0.1, np.log10(max(vals)) + 0.1
        sx = lambda n: int(x0 + (x1 - x0) * np.log10(n) / np.log10(100))  # noqa: E731
        sy = lambda v: int(y0 - (y0 - y1) * (np.log10(max(v, 1e-1)) - lo) / (hi - lo))  # noqa: E731
        cv2.rectangle(img, (x0, y1), (x1, y0), (0, 0, 0), 1)
        for n in NS:
            cv2.putText(img, str(n), (sx(n) - 8, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
            for mult in (1, 2, 5):
                v = mult * 10.0 ** e
                if lo <= np.log10(v) <= hi:
                    cv2.line(img, (x0, sy(v)), (x1, sy(v)), (225, 225, 225), 1)
                    cv2.putText(img, f"{v:g}", (x0 - 55, sy(v) + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
        for head, col in colours.items():
            pts = [(sx(r["n"]), sy(r[key])) for r in rows if r["head"] == head]
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(img, a, b, col, 2, cv2.LINE_AA)
            for q in pts:
                cv2.circle(img, q, 4, col, -1, cv2.LINE_AA)
        scene = [r for r in rows if r["head"] == "scene_only"]
        if scene:
            cv2.line(img, (x0, sy(scene[0][key])), (x1, sy(scene[0][key])), (40, 150, 40), 1, cv2.LINE_AA)
        cv2.putText(img, f"{title} vs N (queries), 384x512", (x0, y1 - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for i, (txt, col) in enumerate((("HyperDETR", (200, 90, 20)), ("DETR panoptic head", (30, 30, 210)),
                                    ("scene_only", (40, 150, 40)))):
        cv2.putText(img, txt, (m + 10 + 190 * i, H - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.55, col, 2, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


# ------------------------------------------------------------------------------------------------ main ---

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnx"),
                    help="runtime for section 1 (both heads): eager PyTorch fp32 or ONNX Runtime fp32")
    ap.add_argument("--mask-stride", type=int, default=1, choices=(1, 2),
                    help="mask output stride for sections 1 and 3 (1: masks at 384x512, as in the issue's figure)")
    ap.add_argument("--no-trunk", dest="trunk", action="store_false",
                    help="section 1 without the shared-trunk timing (backbone + transformer alone, per N)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--compare", action="append", default=[], type=Path, metavar="CKPT",
                    help="interleaved: further weights timed in turn with --weights (repeatable)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile+bf16 (slow first call)")
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--eval-images", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="N in {1, 4, 16, 100}, fewer eval images")
    ap.add_argument("--sections", default="scaling,runtimes,tiling,sizes")
    ap.add_argument("--plot", type=Path, default=HERE.parent / "out" / "benchmarks" / "segmentation_scaling.png",
                    help="plot PNG (raw numbers go to the same name .json); default under the git-ignored out/")
    args = ap.parse_args(argv)
    args.repeats = max(5, args.repeats)
    args.ns = (1, 4, 16, 100) if args.quick else NS
    if args.quick:
        args.eval_images = min(args.eval_images, 3)
    sections = set(args.sections.split(","))
    print(f"campipe segmentation benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}, {args.threads} thread(s), "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (other processes share the CPU)")
    results: dict = {"threads": args.threads, "mask_stride": args.mask_stride, "runtime_scaling": args.runtime,
                     "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if "scaling" in sections:
            print(f"\n1. scaling at 384x512 input, masks at stride {args.mask_stride} ({args.runtime} fp32, decoder "
                  f"pruned to 2 layers, {args.threads} thread(s))")
            rows = results["scaling"] = scaling(args)
            hy = {r["n"]: r for r in rows if r["head"] == "hyperdetr"}
            de = {r["n"]: r for r in rows if r["head"] == "detr"}
            nmax = max(hy)
            print(f"\n  {'N':>4s} | {'HyperDETR ms':>12s} {'cpu ms':>8s} {'MB':>7s} | {'DETR ms':>9s} {'cpu ms':>8s} "
                  f"{'MB':>7s} | speed-up (wall/cpu)  mem ratio")
            for n in sorted(hy):
                print(f"  {n:4d} | {hy[n]['ms']:12.1f} {hy[n]['cpu_ms']:8.1f} {hy[n]['peak_mb']:7.1f} | "
                      f"{de[n]['ms']:9.1f} {de[n]['cpu_ms']:8.1f} {de[n]['peak_mb']:7.1f} | "
                      f"{de[n]['ms'] / hy[n]['ms']:6.1f}x / {de[n]['cpu_ms'] / hy[n]['cpu_ms']:6.1f}x  "
                      f"{de[n]['peak_mb'] / max(hy[n]['peak_mb'], 1e-3):7.1f}x")
            n0 = min(hy)
            print(f"  HyperDETR N={nmax} / N={n0}: wall {hy[nmax]['ms'] / hy[n0]['ms']:.2f}x, cpu "
                  f"{hy[nmax]['cpu_ms'] / hy[n0]['cpu_ms']:.2f}x (target <= 1.3x); at N={nmax}: "
                  f"{de[nmax]['ms'] / hy[nmax]['ms']:.1f}x (wall) / {de[nmax]['cpu_ms'] / hy[nmax]['cpu_ms']:.1f}x "
                  f"(cpu) faster (target >= 20x), "
                  f"{de[nmax]['peak_mb'] / max(hy[nmax]['peak_mb'], 1e-3):.1f}x less memory (target >= 5x)")
            tr = {r["n"]: r for r in rows if r["head"] == "trunk"}
            if tr:
                print(f"\n  mask path = forward - shared trunk (backbone + projection + transformer, same N), ms "
                      f"(wall / cpu)\n  {'N':>4s} | {'trunk':>13s} | {'HyperDETR path':>15s} | {'DETR path':>15s} | "
                      f"path ratio (wall / cpu)")
                for n in sorted(tr):
                    hp = (hy[n]["ms"] - tr[n]["ms"], hy[n]["cpu_ms"] - tr[n]["cpu_ms"])
                    dp = (de[n]["ms"] - tr[n]["ms"], de[n]["cpu_ms"] - tr[n]["cpu_ms"])
                    print(f"  {n:4d} | {tr[n]['ms']:5.1f} / {tr[n]['cpu_ms']:5.1f} | {hp[0]:6.1f} / {hp[1]:6.1f} | "
                          f"{dp[0]:6.1f} / {dp[1]:6.1f} | {dp[0] / max(hp[0], 1e-3):6.1f}x / "
                          f"{dp[1] / max(hp[1], 1e-3):6.1f}x")
                t1 = tr[min(tr)]
                bound = de[nmax]["ms"] / max(t1["ms"], 1e-3)
                print(f"  bound: even a HyperDETR costing only the N=1 trunk ({t1['ms']:.1f} ms) would be "
                      f"{bound:.1f}x faster than the DETR head at N={nmax}")
            plot([r for r in rows if r["head"] != "trunk"], args.plot)
            print(f"  plot: {args.plot}")
        ckpt = is_random = None
        if sections & {"runtimes", "sizes"}:
            ckpt, is_random = load_or_random(args, tmp)
            print(f"\nweights: {ckpt}" + ("  [RANDOM INIT: agreement numbers are indicative only]" if is_random
                                          else ""))
            results["weights"] = {"path": str(ckpt), "random_init": is_random}
        if "runtimes" in sections:
            print("\n2. runtimes at 384x512, N=4, decoder 2 layers")
            results["runtimes"] = runtimes(args, ckpt, tmp)
        if "interleaved" in sections:
            if not args.weights or not args.compare:
                raise SystemExit("--sections interleaved needs --weights and at least one --compare")
            print(f"\n5. interleaved ONNX Runtime fp32, {args.repeats} rounds, {args.threads} thread(s), load "
                  f"average {os.getloadavg()[0]:.2f}")
            results["interleaved"] = interleaved(args, [Path(args.weights), *args.compare], tmp)
        if "tiling" in sections:
            print("\n3. conv-decoder tiling (eager fp32, N=4)")
            results["tiling"] = tiling_rows(args)
        if "sizes" in sections:
            print("\n4. weights file sizes")
            s = results["sizes"] = sizes(args, ckpt, tmp)
            for k, v in s.items():
                print(f"  {k:36s} {v:10.4f}" + (" MB" if "dp" not in k and "iou" not in k else ""))
    results["load_end"] = os.getloadavg()
    print(f"\nload average at the end: {results['load_end'][0]:.2f}")
    js = args.plot.with_suffix(".json")
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(results, indent=1))
    print(f"raw numbers: {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
