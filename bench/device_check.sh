#!/usr/bin/env bash
# Accelerator check, one script, one JSON record (< 8 minutes on one GPU):
#   1. pipeline speed at blip-itm-large-coco size (random weights) against the PyTorch
#      reference on the same GPU (bench/bench_pipeline.py --arch large --device gpu);
#   2. Mask2Former Swin-L at 800 x 1088 against transformers (bench/bench_mask2former.py);
#   3. the evaluator over 200 synthetic RefCOCO-sized images with proposals computed on the
#      fly: images/s, sentences/s, compile time, peak device memory (bench/device_eval.py).
#
#   bash bench/device_check.sh            # on the accelerator; writes
#                                         # bench/results/device-check-<date>.json
#   bash bench/device_check.sh --smoke    # CPU check of the script: the smallest settings
#                                         # of each step (tiny Mask2Former / eval models)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; fi
STAMP=$(date -u +%Y%m%d-%H%M)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
OUT=${DEVICE_CHECK_OUT:-bench/results/device-check-$STAMP$([[ $SMOKE == 1 ]] && echo -smoke).json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
if [[ $SMOKE == 1 ]]; then
  PIPE=(--device cpu --images 1 --sentences 2 --reps 1 --ref-sentences 1 --ref-reps 1
        --parity-sentences 1 --shipped-images 1 --shipped-accepting 1 --scaling 1 --devices 1
        --device-reps 1 --bf16-images 0 --no-text-bucket --stage-reps 1)
  M2F=(--arch tiny --cases 512 --repeats 3)
  EVAL=(--smoke --images 4 --batch-size 2)
else
  PIPE=(--device gpu --arch large --images 4 --sentences 7 --ref-sentences 7 --ref-reps 3
        --scaling 1 8 16 --devices 1 --bf16-images 2)
  M2F=(--cases 800 --repeats 3)
  EVAL=(--images 200 --batch-size 8)
fi
echo "== 1/3 pipeline vs PyTorch reference" >&2
timeout 1500 python bench/bench_pipeline.py "${PIPE[@]}" --out "$TMP/pipeline.json"
echo "== 2/3 Mask2Former vs transformers" >&2
timeout 900 python bench/bench_mask2former.py "${M2F[@]}" --out "$TMP/m2f.json"
echo "== 3/3 evaluation with on-the-fly proposals" >&2
timeout 1200 python bench/device_eval.py "${EVAL[@]}" --out "$TMP/eval.json"
python - "$TMP" "$OUT" "$SMOKE" "$T0" "$*" <<'PY'
import json, os, sys, time
tmp, out, smoke, t0, args = sys.argv[1:]
parts = {k: json.load(open(os.path.join(tmp, f"{k}.json"))) for k in ("pipeline", "m2f", "eval")}
p, m, e = parts["pipeline"], parts["m2f"], parts["eval"]
record = {
    "command": f"bash bench/device_check.sh {args}".strip(), "smoke": smoke == "1",
    "wall_s": time.time() - int(t0), "loadavg_end": list(os.getloadavg()),
    "summary": {
        "pipeline_speedup_vs_torch": p.get("speedup"),
        "pipeline_sentences_per_s": p["ours"]["steady"]["sentences_per_s"],
        "pipeline_compile_s": sum(p["ours"]["cold"]["compile_s"].values()),
        "mask2former_speedup": m.get("speedup_full_path"),
        "eval_images_per_s": e["steady_images_per_s"],
        "eval_sentences_per_s": e["steady_sentences_per_s"],
        "eval_first_batch_s_incl_compile": e["first_batch_s_incl_compile"],
        "eval_peak_device_bytes": e["peak_device_bytes_in_use"]},
    **parts}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(record, open(out, "w"), indent=1)
print(json.dumps(record["summary"], indent=1))
print(f"wrote {out}")
PY
