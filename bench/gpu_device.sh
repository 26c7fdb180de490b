#!/usr/bin/env bash
# The GPU checks as one script for a lent GPU machine (torch and transformers only): the device,
# then bench/gpu.py eager and with torch.compile. Results under $OUT (default: ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,power.limit,memory.total,driver_version --format=csv
  python -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
  python -c "import accelerate; print('accelerate', accelerate.__version__)" || echo "accelerate: missing"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
BATCH=${BATCH:-32}
STEPS=${STEPS:-120}
timeout 240 python bench/gpu.py --no-sweep --batch-size "$BATCH" --steps "$STEPS" > "$OUT/eager.txt" 2>&1; echo "eager rc=$?"
grep -v "^{'\|Writing model" "$OUT/eager.txt" | tail -12
timeout 300 python bench/gpu.py --no-sweep --compile --batch-size "$BATCH" --steps "$STEPS" > "$OUT/compile.txt" 2>&1; echo "compile rc=$?"
grep -v "^{'\|Writing model" "$OUT/compile.txt" | tail -12
