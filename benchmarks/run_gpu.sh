#!/usr/bin/env bash
# The GPU figures in one go, on a CUDA machine whose python3 has torch and triton (no install:
# the package is used from this checkout). Writes under $OUT (default ./gpu_out):
#   tests.log             the Triton path's tests on the GPU (masks identical to the reference,
#                         every direct launch checked against Triton's own kernel lookup)
#   host_probe.json/.txt  host_probe.py: the host's cost of each piece of a call, eager steps
#   eager_parts_1.json, eager_parts_2.json, eager_parts.txt
#                         eager_parts.py, in two processes: full-size eager steps of the planned
#                         call built up part by part (which part costs what against the floor)
#   compile.json/.log     compile_torch.py: the floor and DropBlock under torch.compile (inductor,
#                         default and reduce-overhead) against eager steps
#   network.json/.txt     bench_network.py: what each op adds to a conv -> BN -> ReLU stage's step
#   channels_last.json/.txt
#                         channels_last_torch.py: channels_last inputs (their own product kernel
#                         and the copy route) against contiguous ones, eager and CUDA graph
#   host_os.json/.txt     host_os.py: CPU time (user, kernel) and context switches per eager step,
#                         process and calling thread
#   native_call.json/.txt native_call.py: the public call with the native planned call
#                         (_native.cpp) on and off, eager steps, against the floor
#   flat_call.json/.txt   flat_call.py: the public call against a flattened copy of a planned
#                         call, eager steps (how much of a step the Python around the launches is)
#   host_pieces_1.json, host_pieces_2.json, host_pieces.txt
#                         host_pieces.py, in two processes: the host's cost of each piece of a
#                         planned forward pass alone (the second also launches through ctypes)
#   profile.txt           profile_torch.py: where one forward+backward's host and device time go
#                         (floor, DropBlock, DropBlock on tensor ops)
#   profile.tgz           its Chrome traces and JSON, and gpu_tune.py's cProfile of tiny steps
#   triton_config.json    gpu_tune.py: host costs, kernel times per launch configuration, best
#   gpu_<name>.csv        run_all.py --only torch with the best configuration (modes fwd,
#                         fwd+bwd and graph: forward+backward replayed from a CUDA graph)
#   sass.txt              triton_sass.py for this GPU's architecture: static instruction counts
#                         of both mask kernels, to read against the kernel times
#
# Afterwards `python benchmarks/ingest_gpu.py $OUT` copies the CSV over the committed one and
# writes the probe, eager-parts, flat-call, network, channels_last, host_os, host_pieces, compile
# and tune figures into the GPU's _kernels.json (a folder from the tune, layouts, os, pieces or
# flat step alone folds in as well; the CSV of `bench_torch.py --csv` run on a second machine of
# the round, named bench_repeat_<n>.csv, folds in as a repeat; the chapter's prose is updated by
# hand). The flat step takes about 20 s.
#
# STEPS picks the parts (default: all, in this order; each has its own timeout). Measured on an
# H100 (16 CPU cores, Triton compiling cold): tests 34 s over 14 processes (TEST_WORKERS=14),
# 53 s in another round; tests, probe (PROBE_N=150) and profile together 113 s; parts about 15 s
# per process; compile about 60 s for the three shapes; tune about 2 minutes; bench with ROUNDS=2 MIN_RUN_TIME=0.1 about 3 minutes for the five
# shapes (with ROUNDS=3 MIN_RUN_TIME=0.2 the three 2-D shapes did not finish in 200 s). For example
#   STEPS="tests bench" TEST_WORKERS=14 ROUNDS=2 MIN_RUN_TIME=0.1 bash benchmarks/run_gpu.sh
#   STEPS="profile tune sass" bash benchmarks/run_gpu.sh
# The device tool of the book's sessions brings back at most 8 files: pick STEPS accordingly.
# TEST_K selects tests (pytest -k) and BENCH_ARGS passes more arguments to bench_torch.py, e.g.
#   TEST_K="public or equals_reference" BENCH_ARGS="--shapes 32x1024x14x14,16x256x56x56"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
STEPS=" ${STEPS:-tests probe parts native flat os pieces profile tune bench network layouts compile sass} "
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# the Python plan in every step but bench and network, which measure the default (the native
# planned call, waited for: BENCH_NATIVE=0 measures them through the Python plan); the native
# step compares the two
export STRUCTDROP_NATIVE=${STRUCTDROP_NATIVE:-0}
want() { [[ "$STEPS" == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if want tests; then
    # every geometry compiles its own kernels: spread them over processes where pytest-xdist is
    workers=()
    python3 -c "import xdist" 2>/dev/null && workers=(-n "${TEST_WORKERS:-8}")
    timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -x -p no:cacheprovider "${workers[@]}" \
        ${TEST_K:+-k "$TEST_K"} tests/test_torch_triton.py tests/test_torch_launch.py tests/test_torch_prepared.py > "$OUT/tests.log" 2>&1
    echo "tests exit $?" | tee -a "$OUT/tests.log"; tail -5 "$OUT/tests.log"
    # the native call's tests in a process of their own, verbose (a crash names its test)
    timeout "${TEST_TIMEOUT:-300}" python3 -X faulthandler -m pytest -v -p no:cacheprovider \
        tests/test_torch_native.py >> "$OUT/tests.log" 2>&1
    echo "native tests exit $?" | tee -a "$OUT/tests.log"; grep -E "PASSED|FAILED|ERROR|SKIPPED|Fatal|passed|failed" "$OUT/tests.log" | grep -i native | tail -25
fi
if want probe; then  # host costs of the pieces and eager steps against the floor
    timeout "${PROBE_TIMEOUT:-150}" python3 benchmarks/host_probe.py --n "${PROBE_N:-300}" \
        --out "$OUT/host_probe.json" > "$OUT/host_probe.txt" 2>&1; echo "probe exit $?" | tee -a "$OUT/host_probe.txt"
fi
if want parts; then  # two processes: the spread between them is part of the answer
    for i in 1 2; do
        timeout "${PARTS_TIMEOUT:-150}" python3 benchmarks/eager_parts.py --rounds 7 --n 50 \
            --out "$OUT/eager_parts_$i.json" >> "$OUT/eager_parts.txt" 2>&1; echo "parts exit $?" | tee -a "$OUT/eager_parts.txt"
    done
fi
if want native; then  # the native planned call against the Python plan, eager steps
    timeout "${NATIVE_TIMEOUT:-200}" python3 benchmarks/native_call.py --rounds "${NATIVE_ROUNDS:-9}" --n 50 \
        --out "$OUT/native_call.json" > "$OUT/native_call.txt" 2>&1; echo "native exit $?" | tee -a "$OUT/native_call.txt"; tail -20 "$OUT/native_call.txt"
fi
if want flat; then  # the Python around the launches: public call against a flattened one
    timeout "${FLAT_TIMEOUT:-120}" python3 benchmarks/flat_call.py --out "$OUT/flat_call.json" \
        > "$OUT/flat_call.txt" 2>&1; echo "flat exit $?" | tee -a "$OUT/flat_call.txt"
fi
if want os; then  # where an eager step's CPU time goes: threads, kernel mode, switches
    timeout "${OS_TIMEOUT:-120}" python3 benchmarks/host_os.py --out "$OUT/host_os.json" \
        > "$OUT/host_os.txt" 2>&1; echo "os exit $?" | tee -a "$OUT/host_os.txt"
fi
if want pieces; then  # the first process leaves out the ctypes launch, in case it fails
    timeout "${PIECES_TIMEOUT:-60}" python3 benchmarks/host_pieces.py --no-driver \
        --out "$OUT/host_pieces_1.json" > "$OUT/host_pieces.txt" 2>&1; echo "pieces exit $?" | tee -a "$OUT/host_pieces.txt"
    timeout "${PIECES_TIMEOUT:-60}" python3 benchmarks/host_pieces.py \
        --out "$OUT/host_pieces_2.json" >> "$OUT/host_pieces.txt" 2>&1; echo "pieces exit $?" | tee -a "$OUT/host_pieces.txt"
fi
if want profile; then
    timeout "${PROFILE_TIMEOUT:-120}" python3 benchmarks/profile_torch.py --out "$OUT/profile" \
        > "$OUT/profile.txt" 2>&1; echo "profile exit $?" | tee -a "$OUT/profile.txt"
fi
if want tune; then  # its figures are in the JSON; the log goes to stdout only
    mkdir -p "$OUT/profile"
    timeout "${TUNE_TIMEOUT:-300}" python3 benchmarks/gpu_tune.py --out "$OUT/triton_config.json" \
        --cprofile "$OUT/profile/cprofile.txt" 2>&1
fi
if want bench; then
    config=()
    [ -s "$OUT/triton_config.json" ] && config=(--triton-config "$OUT/triton_config.json")
    name=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import run_all; print(run_all.default_name())")
    # the CSV is written after each shape: a run stopped at the limit keeps what it measured
    # the native planned call on (built first, so that its build is not timed): the package's
    # dropblock rows are its; "structdrop dropblock (Python plan)" is the same call without it
    python3 -c "from structdrop_tutorial.torch import _native as n; n.enable(); print('native extension:', n.module() is not None, n._FAILED)" | tee -a "$OUT/gpu.txt"
    STRUCTDROP_NATIVE=${BENCH_NATIVE:-1} timeout $(( ${BENCH_TIMEOUT:-300} + 60 )) python3 benchmarks/run_all.py --only torch --no-progress \
        --out "$OUT/$name" --time-limit "${BENCH_TIMEOUT:-300}" --script-args "--rounds ${ROUNDS:-3} --min-run-time ${MIN_RUN_TIME:-0.2} ${config[*]} ${BENCH_ARGS:-}" \
        2>&1 | tee "$OUT/bench.log"
fi
if want network; then  # the ops inside a conv -> BN -> ReLU stage, eager steps
    STRUCTDROP_NATIVE=${BENCH_NATIVE:-1} timeout "${NETWORK_TIMEOUT:-150}" python3 benchmarks/bench_network.py --rounds "${NETWORK_ROUNDS:-30}" \
        --out "$OUT/network.json" > "$OUT/network.txt" 2>&1; echo "network exit $?" | tee -a "$OUT/network.txt"
fi
if want layouts; then  # channels_last inputs, eager and replayed
    timeout "${LAYOUTS_TIMEOUT:-120}" python3 benchmarks/channels_last_torch.py \
        --out "$OUT/channels_last.json" > "$OUT/channels_last.txt" 2>&1; echo "layouts exit $?" | tee -a "$OUT/channels_last.txt"
fi
if want compile; then  # dynamo's warnings go to the log
    timeout "${COMPILE_TIMEOUT:-200}" python3 benchmarks/compile_torch.py --time-limit 120 \
        --out "$OUT/compile.json" > "$OUT/compile.log" 2>&1; echo "compile exit $?" | tee -a "$OUT/compile.log"
fi
if [ -d "$OUT/profile" ]; then  # the device tool returns at most 8 files: one archive
    tar -czf "$OUT/profile.tgz" -C "$OUT" profile && rm -rf "$OUT/profile"
fi
if want sass; then
    arch=$(python3 -c "import torch; m, n = torch.cuda.get_device_capability(); print(10 * m + n)")
    timeout 300 python3 benchmarks/triton_sass.py --arch "$arch" > "$OUT/sass.txt" 2>&1; tail -12 "$OUT/sass.txt"
fi
