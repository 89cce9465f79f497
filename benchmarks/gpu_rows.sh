#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one command, for a session that is lent a GPU
# (the device tool's `run`, which starts in the repository root and sets $OUT):
#
#     bash benchmarks/gpu_rows.sh            # at most 9 minutes (the parts' time limits)
#
# The device image has jax (CUDA), optax, tqdm, matplotlib, pytest, hypothesis and torch but no
# network: jcnn runs from the checkout via PYTHONPATH, nothing is installed. Each part writes
# its log (and the bench its JSON) under $OUT, 8 files (the tool brings back 8 at most), and a
# failing part does not stop the rest.
# Sizes can be shrunk for a dry run on CPU:
#     OUT=/tmp/gpu SMOKE=1 bash benchmarks/gpu_rows.sh
set -uo pipefail
OUT="${OUT:?set OUT to a folder for the logs}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
if [ -n "${SMOKE:-}" ]; then
  LENET="8 16"; RESNET="8"; REPEATS=3; TESTS="tests/test_norm.py"
else
  LENET="1024 8192"; RESNET="128 1024"; REPEATS=30
  TESTS="tests/test_pool.py tests/test_norm.py tests/test_conv.py"
fi
status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc"; tail -n 12 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || status=1
}
nvidia-smi -L
$PY -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)'
# correctness on the GPU first: the mask-form pool and the two-sum batch norm are what run there
part tests 120 $PY -m pytest -q -x -p no:cacheprovider $TESTS
part lenet 170 $PY -m jcnn bench --model lenet --batch-sizes $LENET --dtype float32 bfloat16 \
  --repeats $REPEATS --rounds 5 --json "$OUT/lenet.json"
part resnet8 100 $PY -m jcnn bench --model resnet8 --batch-sizes $RESNET --dtype float32 bfloat16 \
  --repeats $REPEATS --rounds 5 --torch none --json "$OUT/resnet8.json"
part pool_forms 50 $PY benchmarks/pool_forms.py --batch-sizes $LENET --repeats $REPEATS
part bn_forms 50 $PY benchmarks/bn_forms.py --batch-sizes $RESNET --repeats $REPEATS
# on CPU the filter gradient runs one convolution per 16 images; does chunking pay on the GPU?
part dw_forms 40 $PY benchmarks/dw_forms.py --batch "${RESNET%% *}" --chunks 16 64 \
  --repeats $REPEATS --no-step
exit $status
