#!/usr/bin/env bash
# One device run of the GPU recipe (segmentation/configs/hyperdetr_gpu.toml) on a rented GPU machine with no network
# and no campipe installed: the package is assembled from the repository folders on PYTHONPATH, the packed training
# split travels in .gpudata/data (pack_data.py), and what comes back under $OUT is what campipe needs here:
# ema_int8_l2.pt (the shipped form), ema_float.pt in <= 15 MB parts (float.part-*; cat them), log.jsonl, train.log.
# A start that fails within ~2.5 min is retried once with the safe settings (threads, float32, phases 30 % shorter).
# Usage (device tool, repository root): bash segmentation/training/device_train.sh [CONFIG]
set -u
CFG=${1:-segmentation/configs/hyperdetr_gpu.toml}
OUT=${OUT:-/tmp/campipe_device_out}
mkdir -p "$OUT"
T0=$(date +%s)
PKG=/tmp/campipe_pkg
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r pipeline "$PKG/campipe" && cp -r segmentation "$PKG/campipe/segmentation" && cp -r effects "$PKG/campipe/effects"
# one BLAS/OpenMP thread per process, so 14 loader processes do not each start a pool as large as the machine
# (measured: 70 img/s with OMP_NUM_THREADS=8, 80 img/s with 1 - the loader was not the main limit); the trainer
# sets its own torch threads
export PYTHONPATH="$PKG" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-python3}
(nvidia-smi -L; nproc; free -g | head -2; $PY -c "import torch, campipe; print(torch.__version__, campipe.__file__)") 2>&1 | tee "$OUT/train.log"
OUTDIR=$(grep -E '^out_dir' "$CFG" | sed -E 's/.*= *"(.*)"/\1/')
$PY -m campipe.segmentation.training.train "$CFG" --no-resume --no-progress --data .gpudata/data 2>&1 | tee -a "$OUT/train.log"
RC=${PIPESTATUS[0]}
if [ "$RC" != 0 ] && [ $(( $(date +%s) - T0 )) -lt 150 ]; then
  echo "== first start failed (rc $RC): retrying with threads, float32, shorter phases" | tee -a "$OUT/train.log"
  sed -E 's/^loader_processes = .*/loader_processes = 0/; s/^amp = .*/amp = "off"/' "$CFG" \
    | awk '/^minutes = /{printf "minutes = %.2f\n", $3 * 0.7; next} {print}' > /tmp/campipe_safe.toml
  rm -rf "$OUTDIR"
  $PY -m campipe.segmentation.training.train /tmp/campipe_safe.toml --no-resume --no-progress --data .gpudata/data \
    2>&1 | tee -a "$OUT/train.log"
fi
if [ ! -f "$OUTDIR/ema_float.pt" ] && [ -f "$OUTDIR/last.pt" ]; then
  echo "== no final export: exporting the EMA weights of the last checkpoint" | tee -a "$OUT/train.log"
  $PY -m campipe.segmentation.training.train "$CFG" --out "$OUTDIR" --export-last 2>&1 | tee -a "$OUT/train.log"
fi
cp "$OUTDIR/log.jsonl" "$OUT/" 2>/dev/null
cp "$OUTDIR/ema_int8_l2.pt" "$OUT/" 2>/dev/null
[ -f "$OUTDIR/ema_float.pt" ] && split -b 15000000 -d "$OUTDIR/ema_float.pt" "$OUT/float.part-"
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
