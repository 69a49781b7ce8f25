"""Tests of structdrop_tutorial.timing with fake clocks and fake callables (no wall-clock asserts)."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from structdrop_tutorial import timing

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None


class FakeWork:
    """A callable whose calls advance a fake clock: the first ``slow`` calls take ``slow_time``."""

    def __init__(self, slow=1, slow_time=100.0, time_per_call=1.0):
        self.now = 0.0
        self.calls = 0
        self.slow, self.slow_time, self.time_per_call = slow, slow_time, time_per_call

    def clock(self):
        return self.now

    def __call__(self):
        self.calls += 1
        self.now += self.slow_time if self.calls <= self.slow else self.time_per_call
        return self.calls


class FakeDevice:
    """An asynchronous device: a call only queues ``time_per_call`` of work and returns at once;
    the clock moves when the host waits for the device (``synchronize``), as on a GPU. A timer
    that reads the clock before waiting measures nothing."""

    def __init__(self, time_per_call=1e-3):
        self.now, self.queued, self.time_per_call = 0.0, 0.0, time_per_call

    def clock(self):
        return self.now

    def __call__(self):
        self.queued += self.time_per_call

    def synchronize(self, result=None):
        self.now += self.queued
        self.queued = 0.0


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_time_torch_waits_for_the_device_before_reading_the_clock():
    gpu = FakeDevice(2e-3)
    m = timing.time_torch(gpu, warmup=2, min_run_time=0.05, clock=gpu.clock,
                          sync=gpu.synchronize)
    assert m.median == pytest.approx(2e-3)


def test_time_interleaved_waits_for_the_device_before_reading_the_clock():
    gpu = FakeDevice()

    def queue(seconds):
        def op():
            gpu.queued += seconds
        return op
    ms = timing.time_interleaved({"a": queue(2e-3), "b": queue(5e-3)}, warmup=1, rounds=5,
                                 clock=gpu.clock, sync=gpu.synchronize)
    assert ms["a"].median == pytest.approx(2e-3) and ms["b"].median == pytest.approx(5e-3)


def test_import_does_not_import_frameworks():
    code = ("import sys, structdrop_tutorial.timing; "
            "print('torch' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_measurement_median_iqr():
    m = timing.Measurement((5.0, 1.0, 2.0, 3.0, 4.0), number=3, warmup=1, label="x", device="d")
    assert m.median == 3.0
    assert m.runs == 5
    assert m.quartiles == (2.0, 4.0)
    assert m.iqr == 2.0
    assert m.ratio(timing.Measurement((1.5,))) == 2.0
    assert "median" in str(m) and "d" in str(m)
    with pytest.raises(ValueError):
        timing.Measurement(())


def test_time_callable_excludes_warmup_and_uses_median():
    work = FakeWork(slow=2, slow_time=100.0, time_per_call=1.0)
    m = timing.time_callable(work, warmup=2, repeat=7, number=3, clock=work.clock)
    assert m.times == (1.0,) * 7
    assert m.median == 1.0 and m.number == 3 and m.warmup == 2
    assert work.calls == 2 + 7 * 3


def test_time_callable_median_not_mean():
    durations = iter([0.0, 1.0, 1.0, 50.0, 1.0, 1.0])  # one outlier run among the recorded ones

    class Work:
        now = 0.0

        def __call__(self):
            Work.now += next(durations)

    m = timing.time_callable(Work(), warmup=1, repeat=5, number=1, clock=lambda: Work.now)
    assert m.median == 1.0
    assert max(m.times) == 50.0


def test_time_callable_syncs_before_every_clock_read():
    work = FakeWork(slow=0)
    events = []

    def clock():
        events.append("clock")
        return work.now

    def sync(result):
        events.append("sync")

    m = timing.time_callable(work, warmup=1, repeat=4, number=2, clock=clock, sync=sync)
    assert m.runs == 4
    # every clock reading is immediately preceded by a sync
    for i, e in enumerate(events):
        if e == "clock":
            assert events[i - 1] == "sync"
    assert events.count("clock") == 2 * 4
    assert events[0] == "sync"  # the warm-up call was synchronized too


def test_time_callable_autorange_calibration_not_recorded():
    work = FakeWork(slow=0, time_per_call=0.001)
    m = timing.time_callable(work, warmup=0, min_run_time=1.0, min_runs=3, clock=work.clock)
    assert m.number >= 50  # grew until one run takes >= min_run_time / 20
    assert m.runs >= 3 and sum(m.times) * m.number >= 1.0 - 1e-9
    assert m.median == pytest.approx(0.001)


def test_time_callable_validates():
    with pytest.raises(ValueError, match="warmup"):
        timing.time_callable(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="repeat"):
        timing.time_callable(lambda: None, repeat=0)
    with pytest.raises(TypeError, match="repeat"):  # 2.5 ran 3 times
        timing.time_callable(lambda: None, repeat=2.5)
    with pytest.raises(ValueError, match="min_runs"):
        timing.time_callable(lambda: None, min_runs=10, max_runs=5)
    for fns in ({}, [lambda: None], {"a": 1}):
        with pytest.raises(ValueError, match="fns must be"):
            timing.time_interleaved(fns)
    with pytest.raises(TypeError, match="number"):
        timing.time_interleaved({"a": lambda: None}, number=None)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_time_torch_validates():
    with pytest.raises(ValueError, match="warmup"):  # it ran, and printed "-1 warm-up"
        timing.time_torch(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="min_run_time"):
        timing.time_torch(lambda: None, min_run_time=0)


def test_time_numpy_and_tensorflow_fake_clock():
    work = FakeWork(slow=1)
    m = timing.time_numpy(work, warmup=1, repeat=3, number=1, clock=work.clock)
    assert m.times == (1.0, 1.0, 1.0)
    work = FakeWork(slow=2, slow_time=30.0)  # trace + compile on the first two calls
    seen = []
    m = timing.time_tensorflow(work, warmup=2, repeat=3, number=2, clock=work.clock,
                               sync=seen.append)
    assert m.median == 1.0
    assert 6 in seen  # the result of the last call of a run was waited for


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_time_torch_fake_clock_excludes_warmup_and_syncs():
    work = FakeWork(slow=3, slow_time=1000.0, time_per_call=0.01)
    syncs = []
    m = timing.time_torch(work, warmup=3, min_run_time=0.05, clock=work.clock,
                          sync=lambda: syncs.append(1), label="fake")
    assert m.median == pytest.approx(0.01)
    assert max(m.times) < 1.0  # no warm-up call recorded
    assert len(syncs) >= 2 * m.runs  # the Timer's clock synchronizes at every reading
    with pytest.raises(ValueError, match="method"):
        timing.time_torch(work, method="fast", clock=work.clock, sync=lambda: None)


def test_time_torch_with_a_costly_sync_still_runs_many_short_blocks():
    """A clock that synchronizes a GPU costs microseconds; the Timer's own blocked_autorange then
    sized one block longer than the whole measurement (a median of one number). time_torch must
    still record at least 5 blocks of about min_run_time / 20, here with a 100 us op and a
    20 us synchronization on a fake clock."""
    work = FakeWork(slow=0, time_per_call=100e-6)

    def costly_sync():
        work.now += 20e-6

    m = timing.time_torch(work, warmup=2, min_run_time=0.3, clock=work.clock, sync=costly_sync)
    assert m.runs >= 5
    assert 0.3 / 20 <= m.number * 100e-6 <= 0.3 / 4       # blocks of about min_run_time / 20
    assert m.median == pytest.approx(100e-6, rel=0.02)    # the sync cost is spread over a block


def test_sweep_runs_every_case_in_order(capsys):
    out = timing.sweep([3, 1, 2], lambda c: c * 10, desc="t")
    assert out == [30, 10, 20]
    assert timing.sweep([1], lambda c: c, progress=False) == [1]


def test_bandwidth_floor():
    # 1e6 float32 elements, read x and mask, write y: 12 MB at 12 GB/s -> 1 ms
    assert timing.bandwidth_floor_seconds(10**6, 4, 2, 1, 12e9) == pytest.approx(1e-3)
    assert timing.masked_multiply_bytes(10, 4, 4) == 120
    assert timing.masked_multiply_bytes(10, 4, 1, backward=True) == 180
    with pytest.raises(ValueError, match="bandwidth"):
        timing.bandwidth_floor_seconds(10, bandwidth=0)


def test_measure_bandwidth_numpy_small():
    bw = timing.measure_bandwidth(n_bytes=2**20, min_run_time=0.01)
    assert bw.bytes_per_second > 0 and bw.bytes_moved == 2 * 2**20
    with pytest.raises(ValueError, match="backend"):
        timing.measure_bandwidth(backend="cupy")


def test_committed_timings_load():
    assert len(timing.timing_files()) >= 4  # two CPUs, two GPUs: the data ships with the package
    for name in timing.timing_files():
        rows = timing.load_timings([name])
        assert rows, name
        for row in rows:
            assert row["device"] and row["op"] and row["pass"] in ("fwd", "fwd+bwd", "graph")
            assert row["median_s"] > 0
            # "graph": forward+backward replayed from a CUDA graph, measured on GPUs only
            assert row["pass"] != "graph" or row["device_kind"] == "gpu", (name, row["op"])


def _nchw(label: str) -> str:
    """A channels_last shape label ("32x14x14x1024") with the channels moved forward."""
    dims = label.split("x")
    return "x".join([dims[0], dims[-1]] + dims[1:-1])


def test_committed_cases_are_named_alike_in_every_framework():
    """A case is named by its NCHW shape in every framework's rows (TensorFlow and NumPy run it
    channels_last): the label is the row's shape with the channels moved forward, so the same
    input has one name across frameworks."""
    import re
    for name in timing.timing_files():
        for row in timing.load_timings([name]):
            case, shape = row["case"], row["shape"]
            assert re.fullmatch(r"\d+(x\d+)+", case), (name, row["framework"], case)
            nchw = _nchw(shape)
            assert case in (shape, nchw), (name, row["framework"], case, shape)
            if row.get("data_format") == "channels_first" or row["framework"] == "torch":
                assert case == shape, (name, row["framework"], case, shape)
            elif row["framework"] in ("numpy", "tensorflow"):
                assert case == nchw, (name, row["framework"], case, shape)


def test_committed_timing_details_load():
    """Every JSON next to the CSVs names its device, software, date and method, and its device
    times are positive numbers keyed by a shape that some committed CSV row also measured."""
    details = timing.load_timing_details()
    assert details  # the GPU kernel timings ship with the package
    # chapter 8 prints the CPU sampler and allocator figures (benchmarks/cpu_details.py)
    cpu = [d for d in details.values() if "sampler" in d]
    assert cpu and all(s["same_numbers"] for d in cpu for s in d["sampler"].values())
    shapes = {r["case"] for r in timing.load_timings()}
    for name, d in details.items():
        assert d["device"] and d["software"] and d["date"] and d["method"], name
        for shape, times in d.get("device_us", {}).items():
            assert shape in shapes, (name, shape)
            assert all(isinstance(t, float) and t > 0 for t in times.values()), (name, shape)


# --------------------------------------------------------------------------- benchmark smoke tests
def _bench_module(name):
    """benchmarks/<name>.py loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_all_module():
    return _bench_module("run_all")


def test_numpy_benchmark_has_no_device_option():
    """bench_numpy.py runs on the CPU only: it does not offer a --device it would ignore."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_numpy.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--threads" in proc.stdout
    assert "--device" not in proc.stdout


def _run_bench(script, tmp_path):
    """Run one benchmark script small and quick, through run_all's command line adapter."""
    path = ROOT / "benchmarks" / script
    assert path.exists(), f"benchmarks/{script} is missing"
    run_all = _run_all_module()
    out = tmp_path / f"{script}.csv"
    cmd = run_all.script_command(path, out, quick=True, tiny=True, threads=2, progress=False)
    if script == "bench_torch.py":  # on a CUDA machine it would time the GPU and add a graph pass
        cmd += ["--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_all.child_env(),
                          timeout=900)  # a busy 2-core machine took over 300 s
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(out, newline="") as f:
        rows = run_all.normalize(list(csv.DictReader(f)), script[6:-3], 2)
    assert rows and all(float(r["median_s"]) > 0 for r in rows)
    assert {r["pass"] for r in rows} <= {"fwd", "fwd+bwd"}
    assert all(r["ratio"] and float(r["ratio"]) > 0 for r in rows)
    # every framework's rows say what was measured and against what, in the same columns
    described = ("case", "shape", "data_format", "dtype", "elements", "runs", "number",
                 "floor_op", "floor_median_s", "framework_version", "device")
    for r in rows:
        assert all(r.get(k) for k in described), {k: r.get(k) for k in described}
        assert int(r["elements"]) == math.prod(int(s) for s in r["shape"].split("x"))
        assert r["data_format"] in ("channels_first", "channels_last") and int(r["number"]) >= 1
        floors = [f for f in rows if f["op"] == r["floor_op"] and f["case"] == r["case"]
                  and f["pass"] == r["pass"]]
        assert len(floors) == 1 and floors[0]["median_s"] == r["floor_median_s"], r
    return rows, proc.stdout


@pytest.mark.parametrize("script", ["bench_numpy.py", "bench_torch.py", "bench_tensorflow.py"])
def test_run_all_size_options_mean_the_same_for_every_script(script):
    """--quick asks each script for few rounds and --tiny for small shapes, never one for the
    other (PyTorch's script once took --quick for its small shape)."""
    run_all = _run_all_module()
    path = ROOT / "benchmarks" / script
    for quick, tiny in ((True, False), (False, True), (True, True)):
        cmd = run_all.script_command(path, Path("x.csv"), quick=quick, tiny=tiny, threads=2,
                                     progress=False)
        assert ("--quick" in cmd, "--tiny" in cmd) == (quick, tiny), (quick, tiny, cmd)


def test_bench_numpy_smoke(tmp_path):
    rows, stdout = _run_bench("bench_numpy.py", tmp_path)
    assert any(r["op"] == "floor" for r in rows)
    assert {r["op"] for r in rows} >= {"dropblock", "spatial_dropout"}
    assert "ratio" in rows[0] and all(float(r["ratio"]) > 0 for r in rows)
    assert "numpy fwd on" in stdout


def _run_all_numpy(out):
    """``run_all.py --only numpy`` (tiny, quick) into ``out``; the rows it leaves there."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only",
                           "numpy", "--tiny", "--quick", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def test_run_all_merges(tmp_path):
    out = tmp_path / "all.csv"
    rows = _run_all_numpy(out)
    assert rows and {r["framework"] for r in rows} == {"numpy"}
    # a second partial run replaces its own framework's rows and keeps the others
    with open(out, "a", newline="") as f:
        f.write("torch" + "," * (len(rows[0]) - 1) + "\n")
    again = _run_all_numpy(out)
    assert [r["framework"] for r in again].count("torch") == 1
    assert sum(r["framework"] == "numpy" for r in again) == len(rows)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_bench_torch_smoke(tmp_path):
    rows, stdout = _run_bench("bench_torch.py", tmp_path)
    assert {"fwd", "fwd+bwd"} <= {r["pass"] for r in rows}


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_cpu_details_smoke(tmp_path):
    """benchmarks/cpu_details.py --quick writes what chapter 8 reads: the sampler's timings
    (with the same numbers as geometric_) and both allocator settings' medians and faults."""
    out = tmp_path / "details.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_details.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["device"] and d["software"] and d["date"] and d["method"]
    assert d["allocator"] == "keep freed memory, one arena"  # common.MALLOC_KEEP
    assert d["sampler"] and all(v["same_numbers"] and v["gaps"] > 0 and v["speedup"] > 0
                                for v in d["sampler"].values())
    grid = d["seed_grid"]
    assert grid["input"] == "2x32x28x28" and grid["grid"] == "2x32x22x22"
    assert grid["ratio"]["floor x * mask"] == 1.0 and len(grid["ms"]) == 5
    assert all(ms > 0 for ms in grid["ms"].values())
    assert set(d["malloc"]["settings"]) == {"default", "keep freed memory, one arena"}
    runs = [(d["malloc"]["settings"], {"floor x*mask", "structdrop dropblock"})]
    if HAS_TF:  # TensorFlow's graphs also with glibc's arena per thread (the older setting)
        tf_part = d["malloc"]["tensorflow"]
        assert tf_part["shape"] == "2x32x28x28" and tf_part["before"] == ["2x16x14x14"]
        assert set(tf_part["settings"]) == {"default", "keep freed memory",
                                            "keep freed memory, one arena"}
        assert all(len(each) == 1 for each in tf_part["settings"].values())  # --quick: one run
        runs.append(({k: each[0] for k, each in tf_part["settings"].items()},
                     {"floor x*mask", "dropblock"}))
    else:
        assert "tensorflow" not in d["malloc"]
    for settings, ops in runs:
        for setting in settings.values():
            assert set(setting) == ops
            assert all(v["median_ms"] > 0 and v["page_faults_per_call"] >= 0
                       for v in setting.values())
    # the PyTorch benchmark run after run (two with --quick)
    assert d["repeats"]["shapes"] == ["2x32x28x28"] and len(d["repeats"]["runs"]) == 2
    for run in d["repeats"]["runs"]:
        assert run["floor_ms"]["2x32x28x28"] > 0 and run["dropblock_ratio"]["2x32x28x28"] > 0


def test_bench_torch_graph_mode_with_cuda_mocked(monkeypatch):
    """The CUDA-graph mode's control flow without a GPU: torch.cuda's stream and graph API are
    mocked (replay does nothing, so the times mean nothing); every op gets a row, except one
    whose capture fails, which is reported and left out."""
    torch = pytest.importorskip("torch")
    import contextlib
    bench = _bench_module("bench_torch")

    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        def replay(self):
            pass

    captured = []

    @contextlib.contextmanager
    def graph(g):
        captured.append(g)
        if len(captured) == 3:  # the third op captured: structdrop dropblock
            raise RuntimeError("operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    rows = bench.run([(2, 4, 8, 8)], 2, 1, 0.001, ["graph"], memory=False, device="cpu")
    ops = [r["op"] for r in rows]
    assert "structdrop dropblock" not in ops and all(r["mode"] == "graph" for r in rows)
    assert {"floor x*mask", "structdrop dropblock normalize=rate", "structdrop spatial_dropout"} <= set(ops)
    assert len(captured) == len(ops) + 1
    with pytest.raises(SystemExit):  # the mode needs CUDA
        bench.main(["--modes", "graph", "--device", "cpu", "--quick"])


def test_profile_torch_smoke(tmp_path):
    """profile_torch.py on the CPU: per-step wall time, the events behind it (DropBlock's own
    autograd Function, forward and backward, among them) and a readable Chrome trace per op."""
    pytest.importorskip("torch")
    import gzip
    import json
    prof = _bench_module("profile_torch")
    res = prof.main(["--device", "cpu", "--shapes", "2x4x16x16", "--steps", "2", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "profile.json").read_text()) == res
    ops = res["shapes"]["2x4x16x16"]
    assert set(ops) == {"floor x*mask", "structdrop dropblock"}
    assert all(r["wall_us"] > 0 and r["top_cpu"] for r in ops.values())
    names = " ".join(r["name"] for r in ops["structdrop dropblock"]["top_cpu"])
    assert "MaskedScale" in names and "Backward" in names
    assert "MaskedScale" not in " ".join(r["name"] for r in ops["floor x*mask"]["top_cpu"])
    traces = sorted(tmp_path.glob("trace_*.json.gz"))
    assert [t.name for t in traces] == ["trace_2x4x16x16_floor_x_mask.json.gz",
                                        "trace_2x4x16x16_structdrop_dropblock.json.gz"]
    for t in traces:
        assert json.loads(gzip.decompress(t.read_bytes()))["traceEvents"]
    with pytest.raises(SystemExit):
        prof.main(["--steps", "0"])
    # the device columns, as a CUDA profile reports them (PyTorch's names moved between releases)
    from types import SimpleNamespace as Event

    class FakeProfile:
        def key_averages(self):
            return [Event(key="mask_kernel", count=4, self_cpu_time_total=8.0,
                          self_device_time_total=160.0),
                    Event(key="aten::mul", count=4, self_cpu_time_total=40.0,
                          self_cuda_time_total=80.0),
                    Event(key="step", count=2, self_cpu_time_total=20.0,
                          self_device_time_total=0.0)]

    out = prof.summarize(FakeProfile(), steps=2, on_gpu=True)
    assert out["device_us"] == 120.0
    assert [(r["name"], r["self_device_us"]) for r in out["top_device"]] == [
        ("mask_kernel", 80.0), ("aten::mul", 40.0)]
    assert out["top_cpu"][0] == {"name": "aten::mul", "calls": 2.0, "self_cpu_us": 20.0}


def test_bench_network_smoke(tmp_path, capsys):
    """bench_network.py on the CPU: every op's step and added time against the stage without
    an op; the added times are the differences of the steps, and the floor's ratio is 1."""
    pytest.importorskip("torch")
    import json
    net = _bench_module("bench_network")
    out = tmp_path / "network.json"
    net.main(["--device", "cpu", "--shapes", "2x8x14x14", "--rounds", "1", "--number", "1",
              "--out", str(out)])
    steps = json.loads(out.read_text())["steps"]["2x8x14x14"]
    assert {"none", "floor x*mask", "structdrop dropblock", "torch F.dropout2d"} <= set(steps)
    base = steps["none"]["step_s"]
    for op, v in steps.items():
        assert v["step_s"] > 0 and v["added_s"] == pytest.approx(v["step_s"] - base), op
    assert "structdrop dropblock" in capsys.readouterr().out


def test_host_probe_smoke(monkeypatch, capsys):
    """host_probe.py's timing loop and its step table on the CPU (the Triton pieces need a GPU,
    or the interpreter, which the tests of that path cover)."""
    pytest.importorskip("torch")
    import torch
    probe = _bench_module("host_probe")
    calls = []
    assert probe.wall_us(lambda: calls.append(1), "cpu", n=5, repeats=3) > 0
    assert len(calls) == 20 + 3 * 5
    x = torch.ones(3, requires_grad=True)
    m = torch.full((3,), 2.0)
    for fn in (probe.NativeBackward, probe.PassBackward):
        (gx,) = torch.autograd.grad(fn.apply(x, m), x, torch.ones(3))
        assert torch.equal(gx, m if fn is probe.NativeBackward else torch.ones(3))
    # _kept: the gradient of the call, and the output alive until the next call
    outputs = []
    kept = probe._kept(lambda t: outputs.append(t * m) or outputs[-1], x, torch.ones(3))
    (gx,) = kept()
    assert torch.equal(gx, m)
    import weakref
    first = weakref.ref(outputs.pop())
    assert first() is not None  # kept by the probe after the call
    kept()
    outputs.clear()
    assert first() is None  # released by the next call
    # _fresh_state: the row-word kernel's state is asked for as while capturing, then restored
    from structdrop_tutorial.torch import _triton
    seen = []
    monkeypatch.setattr(_triton, "_row_state", lambda device, scratch, eager: seen.append(eager))
    patched = _triton._row_state
    probe._fresh_state(lambda: _triton._row_state("cpu", 4, True))()
    assert seen == [False] and _triton._row_state is patched


@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed")
def test_bench_tensorflow_smoke(tmp_path):
    rows, stdout = _run_bench("bench_tensorflow.py", tmp_path)
    assert {"fwd", "fwd+bwd"} <= {r["pass"] for r in rows}
    assert any(r["op"] == "dropblock (XLA)" and r["pass"] == "fwd" for r in rows)
    for r in rows:  # NHWC runs, named by the NCHW shape as in the other frameworks
        assert r["case"] == _nchw(r["shape"]), (r["case"], r["shape"])
    for r in rows:  # the measured library's version, on keras-cv's rows (when installed) only
        assert bool(r["reference_version"]) == r["op"].startswith("keras_cv"), r["op"]
    assert all(float(r["page_faults_per_call"]) >= 0 for r in rows)  # every row counts them


@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed")
def test_bench_tensorflow_shapes_by_nchw_name(tmp_path):
    """--shapes names cases as the other scripts do (NCHW) and runs them NHWC; a malformed
    shape is refused by name."""
    out = tmp_path / "tf.csv"
    script = str(ROOT / "benchmarks" / "bench_tensorflow.py")
    cmd = [sys.executable, script, "--shapes", "2x8x14x14", "--jit", "off", "--modes", "fwd",
           "--rounds", "1", "--no-progress", "--csv", str(out)]
    env = _run_all_module().child_env(keep_memory=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(r["shape"], r["case"]) for r in rows} == {("2x14x14x8", "2x8x14x14")}
    bad = subprocess.run([sys.executable, script, "--shapes", "2x8x0x14"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "--shapes: '2x8x0x14'" in bad.stderr


def test_time_interleaved_round_robin_and_sync():
    order = []
    clock_now = [0.0]

    def make(label, cost):
        def fn():
            order.append(label)
            clock_now[0] += cost
            return label
        return fn

    syncs = []
    out = timing.time_interleaved({"floor": make("floor", 1.0), "op": make("op", 3.0)},
                                  warmup=2, rounds=4, clock=lambda: clock_now[0],
                                  sync=syncs.append)
    assert order[:4] == ["floor", "floor", "op", "op"]  # warm-up first
    assert order[4:] == ["floor", "op"] * 4  # then alternating rounds
    assert out["op"].ratio(out["floor"]) == 3.0 and out["floor"].runs == 4
    assert "op" in syncs and None in syncs
    with pytest.raises(ValueError, match="rounds"):
        timing.time_interleaved({"a": lambda: None}, rounds=0)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_sync_on_cpu_is_a_no_op():
    sync = timing.torch_sync("cpu")
    assert sync() is None and sync(object()) is None


def test_run_all_keeps_memory_unless_told_and_records_it(monkeypatch):
    """The benchmark processes get glibc settings that keep freed memory in one arena (no page
    faults from fresh mappings, on any thread), unless the caller set those variables or asked
    for the defaults; each row says which allocator setting it was timed with."""
    run_all = _run_all_module()
    common = sys.modules["common"]
    for key in common.MALLOC_KEEP:
        monkeypatch.delenv(key, raising=False)
    kept = run_all.child_env(keep_memory=True)
    assert all(kept[k] == v for k, v in common.MALLOC_KEEP.items())
    assert common.malloc_setting(kept) == "keep freed memory, one arena"
    plain = run_all.child_env()
    assert not set(common.MALLOC_KEEP) & set(plain) and common.malloc_setting(plain) == "default"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "16")  # glibc's arena per thread: the older label
    arenas = run_all.child_env(keep_memory=True)
    assert arenas["MALLOC_ARENA_MAX"] == "16"
    assert common.malloc_setting(arenas) == "keep freed memory"
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")  # the caller's own choice wins
    mine = run_all.child_env(keep_memory=True)
    assert mine["MALLOC_MMAP_MAX_"] == "65536" and common.malloc_setting(mine) == "default"
    (row,) = run_all.normalize([{"op": "floor", "median_s": "1"}], "numpy", 2, "default")
    assert row["malloc"] == "default"
    assert "malloc" in common.COLUMNS


def test_run_all_keeps_the_rows_of_a_script_stopped_at_its_time_limit(tmp_path, monkeypatch, capsys):
    """A benchmark stopped by ``--time-limit`` counts as failed, but the rows it had written
    (the PyTorch script writes its CSV after each shape) are merged, not lost."""
    run_all = _run_all_module()
    script = tmp_path / "bench_fake.py"
    script.write_text(
        "import argparse, os, pathlib, time\n"
        "here = pathlib.Path(__file__).parent\n"
        "(here / 'child.pid').write_text(str(os.getpid()))\n"
        "p = argparse.ArgumentParser(); p.add_argument('--csv'); a = p.parse_args()\n"
        "open(a.csv, 'w').write('op,shape,pass,median_s\\nfloor,8x8,fwd,0.001\\n')\n"
        "time.sleep(120)\n"
        "(here / 'slept_out').write_text('the script was not stopped')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "SCRIPTS", (("bench_fake.py", "numpy"),))
    out = tmp_path / "merged.csv"
    code = run_all.main(["--only", "numpy", "--no-progress", "--out", str(out), "--time-limit", "5"])
    # stopped, not slept out: main returned before the script's sleep ended, and the script's
    # process was killed and reaped (its pid no longer exists)
    assert not (tmp_path / "slept_out").exists()
    pid = int((tmp_path / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert code == 1 and "no result within --time-limit 5 s; keeping the rows it wrote" in capsys.readouterr().out
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["op"] == "floor" and row["framework"] == "numpy" and float(row["median_s"]) == 0.001


def test_run_all_gives_each_script_its_own_extra_options(tmp_path, monkeypatch):
    """``--script-args`` reach every script; ``--<framework>-args`` only that framework's."""
    run_all = _run_all_module()
    for name in ("bench_a.py", "bench_b.py"):
        (tmp_path / name).write_text(
            "import json, pathlib, sys\n"
            "if '--help' in sys.argv: print('--csv'); sys.exit(0)\n"
            "out = sys.argv[sys.argv.index('--csv') + 1]\n"
            "pathlib.Path(__file__).with_suffix('.argv').write_text(json.dumps(sys.argv[1:]))\n"
            "open(out, 'w').write('op,shape,pass,median_s\\nfloor,8x8,fwd,0.001\\n')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "SCRIPTS", (("bench_a.py", "numpy"), ("bench_b.py", "torch")))
    monkeypatch.setattr(run_all.importlib.util, "find_spec", lambda name: object())
    code = run_all.main(["--no-progress", "--out", str(tmp_path / "m.csv"), "--script-args",
                         "--rounds 3", "--torch-args", "--modes 'fwd bwd'"])
    assert code == 0
    a = json.loads((tmp_path / "bench_a.argv").read_text())
    b = json.loads((tmp_path / "bench_b.argv").read_text())
    assert a[-2:] == ["--rounds", "3"] and "--modes" not in a
    assert b[-4:] == ["--rounds", "3", "--modes", "fwd bwd"]


def test_run_all_normalizes_other_scripts_columns():
    run_all = _run_all_module()
    rows = run_all.normalize([
        {"framework": "tensorflow", "op": "dropblock", "shape": "2x8x8x4", "mode": "fwd+bwd xla",
         "jit": "True", "median_s": "0.002", "ratio_to_floor": "2.5", "device": "AMD EPYC"},
        {"op": "floor x*mask", "shape": "2x4x8x8", "mode": "fwd", "median_s": "0.001",
         "ratio_to_floor": "1.0", "torch_version": "2.1", "device": "NVIDIA H100 80GB HBM3"},
    ], "torch", 2)
    tf_row, torch_row = rows
    assert tf_row["pass"] == "fwd+bwd" and tf_row["op"] == "dropblock (XLA)"
    assert tf_row["ratio"] == "2.5" and tf_row["case"] == "2x8x8x4"
    assert torch_row["framework"] == "torch" and torch_row["framework_version"] == "2.1"
    assert torch_row["device_kind"] == "gpu" and torch_row["threads"] == 2
    assert run_all.default_name().endswith(".csv")


@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed")
def test_tensorflow_sync_copies_nothing_on_a_synchronous_cpu():
    import tensorflow as tf
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("checks the CPU rule")

    class Result:
        copies = 0

        def numpy(self):
            Result.copies += 1

    assert tf.config.experimental.get_synchronous_execution()
    timing.tensorflow_sync(Result())
    assert Result.copies == 0  # the call already returned with its outputs
    tf.config.experimental.set_synchronous_execution(False)
    try:
        timing.tensorflow_sync(Result())
    finally:
        tf.config.experimental.set_synchronous_execution(True)
    assert Result.copies == 1  # asynchronous execution: wait by fetching the value


@pytest.mark.skipif(not HAS_TORCH or importlib.util.find_spec("triton") is None,
                    reason="torch and triton needed")
def test_host_probe_busy_times_the_call_alone(monkeypatch):
    """busy_us times only the call, issued behind the queued work (a call that waits 2 ms takes
    2 ms, one that returns at once takes microseconds, however long the synchronization after
    it takes), and synchronizes after each call."""
    pytest.importorskip("torch")
    import time
    import torch
    probe = _bench_module("host_probe")
    events = []

    def synchronize(*args):
        events.append("sync")
        time.sleep(0.004)  # the queued work draining: not the call's time

    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: events.append("sleep"), raising=False)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    assert probe.busy_us(lambda: events.append("call") or time.sleep(0.002), repeats=3) >= 1900
    assert events[:7] == ["call", "sync", "sleep", "call", "sync", "sleep", "call"]
    assert probe.busy_us(lambda: None, repeats=3) < 1000


def test_host_probe_stub_runs(tmp_path):
    """host_probe.py --stub (no GPU: no-op launchers) times the ordinary and the prepared
    DropBlock calls; it makes its plan or fails. Times are reported, never asserted."""
    import json
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_probe.py"), "--stub",
                           "--n", "20", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    host = json.loads(out.read_text())["host_us"]
    assert set(host) == {"floor x*mask fwd", "floor x*mask fwd+bwd", "dropblock fwd, ordinary",
                         "dropblock fwd, prepared", "dropblock fwd+bwd, ordinary",
                         "dropblock fwd+bwd, prepared"}
    assert all(v > 0 for v in host.values())


def test_host_os_stub_runs(tmp_path):
    """host_os.py --stub (no GPU: no-op launchers) counts CPU time and context switches per step
    for each of its cases, with and without autograd's worker threads. Only that every field is
    there and non-negative is asserted."""
    import json
    out = tmp_path / "os.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_os.py"), "--stub",
                           "--n", "20", "--rounds", "1", "--shapes", "1x1x16x16", "--out",
                           str(out)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    steps = json.loads(out.read_text())["steps"]["1x1x16x16"]
    assert len(steps) == 10 and "dropblock (planned), single-threaded autograd" in steps
    assert all(len(row) == 9 and min(row.values()) >= 0 for row in steps.values())


def test_ingest_gpu_folds_a_round_into_the_timings(tmp_path):
    """ingest_gpu.py copies the round's CSV over the committed one and writes the probe and the
    network timings into that GPU's JSON with the software of gpu.txt, keeping its other
    entries; probes that failed go to a table of their own; a missing gpu.txt version line is an
    error, not a blank."""
    import json
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    header = "framework,op,pass,case,ratio\n"
    (out / "gpu_fake.csv").write_text(header + "torch,structdrop dropblock,fwd+bwd,32x512x28x28,1.4\n"
                                      "torch,floor x*mask,fwd+bwd,32x512x28x28,1.0\n")
    (timings / "gpu_fake.csv").write_text(header)
    (timings / "gpu_fake_kernels.json").write_text(json.dumps(
        {"device_us": {"a": 1}, "host_probe": {"date": "then"}}))
    (out / "compile_1.json").write_text(json.dumps(
        {"label": "this code", "rounds": 5, "n": 50, "backend": "inductor",
         "shapes": {"32x512x28x28": {"step_us": {"floor x*mask, eager": 100.0}}}}))
    for i in (1, 2):
        (out / f"eager_parts_{i}.json").write_text(json.dumps(
            {"rounds": 7, "n": 50, "steps_us": {"32x512x28x28": {"floor x*mask": 100.0,
                                                                 "dropblock": 150.0 + i}}}))
    (out / "gpu.txt").write_text("name\nFake GPU\ntorch 9.0 triton 9.1\n")
    (out / "host_probe.json").write_text(json.dumps(
        {"device": "Fake GPU", "torch": "9.0",
         "host_us": {"dropblock fwd+bwd, prepared": 100.0, "op": "RuntimeError: no derivative"},
         "eager_fwd_bwd_us": {"32x512x28x28": {"floor x*mask": 100.0, "dropblock, prepared": 140.0,
                                               "op": "RuntimeError: no derivative"}},
         "host_us_device_busy": {"nothing": 1.0, "op": "RuntimeError: no derivative"}}))
    (out / "network.json").write_text(json.dumps(
        {"device": "Fake GPU", "torch": "9.0", "block": 7, "rate": 0.1, "stage": "s",
         "steps": {"32x512x28x28": {"none": {"step_s": 1e-3, "added_s": 0.0}}}}))
    wrote = ingest.ingest(out, timings, dry_run=True)
    assert wrote["ratios"] == {("fwd+bwd", "32x512x28x28"): 1.4}
    assert (timings / "gpu_fake.csv").read_text() == header  # dry run: nothing written
    ingest.ingest(out, timings)
    assert (timings / "gpu_fake.csv").read_text() == (out / "gpu_fake.csv").read_text()
    kernels = json.loads((timings / "gpu_fake_kernels.json").read_text())
    assert kernels["device_us"] == {"a": 1}
    assert kernels["host_probe"]["software"] == kernels["network"]["software"] == \
        "torch 9.0, triton 9.1"
    assert kernels["host_probe"]["host_us"] == {"dropblock fwd+bwd, prepared": 100.0}
    assert kernels["host_probe"]["eager_fwd_bwd_us"] == {
        "32x512x28x28": {"floor x*mask": 100.0, "dropblock, prepared": 140.0}}
    assert kernels["host_probe"]["host_us_device_busy"] == {"nothing": 1.0}
    assert kernels["host_probe"]["failed"] == {  # probes that failed are kept apart, by name
        "op": "RuntimeError: no derivative", "32x512x28x28: op": "RuntimeError: no derivative",
        "device busy: op": "RuntimeError: no derivative"}
    assert kernels["network"]["steps"]["32x512x28x28"]["none"]["step_s"] == 1e-3
    assert kernels["host_probe_earlier"] == [{"date": "then"}]  # the earlier probe is kept
    ingest.ingest(out, timings)  # the same round again: not kept twice
    assert json.loads((timings / "gpu_fake_kernels.json").read_text())["host_probe_earlier"] == \
        [{"date": "then"}]
    assert [run["32x512x28x28"]["dropblock"] for run in kernels["eager_parts"]["runs"]] == \
        [151.0, 152.0]
    assert "--rounds 7 --n 50" in kernels["eager_parts"]["method"]
    assert kernels["compile"]["runs"] == [{"label": "this code", "rounds": 5, "n": 50, "shapes": {
        "32x512x28x28": {"step_us": {"floor x*mask, eager": 100.0}}}}]
    (out / "gpu.txt").write_text("name\nFake GPU\n")
    with pytest.raises(ValueError, match="torch X triton Y"):
        ingest.ingest(out, timings)


def test_ingest_gpu_folds_benchmark_repeats(tmp_path):
    """A bench_torch.py CSV from another machine of the round (bench_repeat*.csv) folds under
    benchmark_repeats: its device and torch, the floor's median in ms and each op's ratio per
    mode and ResNet-50 shape (other shapes left out); a CSV without those shapes is refused."""
    import json
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    (out / "gpu.txt").write_text("name\nFake GPU 4\ntorch 9.0 triton 9.1\n")
    (out / "gpu_fake_gpu_4.csv").write_text("framework,op,pass,case,ratio\n")
    header = "op,shape,mode,median_s,ratio_to_floor,floor_op,device,torch_version\n"
    (out / "bench_repeat_1.csv").write_text(
        header + "floor x*mask,32x512x28x28,fwd+bwd,8.6e-05,1.000,floor x*mask,Fake GPU 4,9.0\n"
        "structdrop dropblock,32x512x28x28,fwd+bwd,0.000142,1.647,floor x*mask,Fake GPU 4,9.0\n"
        "structdrop dropblock,2x3x8x8,fwd+bwd,0.0001,9.9,floor x*mask,Fake GPU 4,9.0\n")
    wrote = ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_4_kernels.json").read_text())
    assert kernels["benchmark_repeats"] == wrote["benchmark_repeats"]
    (run,) = kernels["benchmark_repeats"]["runs"]
    assert run["device"] == "Fake GPU 4" and run["torch"] == "9.0"
    assert run["modes"] == {"fwd+bwd": {"32x512x28x28": {
        "floor_ms": 0.086, "floor x*mask": 1.0, "structdrop dropblock": 1.647}}}
    assert kernels["benchmark_repeats"]["software"] == "torch 9.0, triton 9.1"
    (out / "bench_repeat_1.csv").write_text(
        header + "floor x*mask,2x3x8x8,fwd+bwd,8.6e-05,1.000,floor x*mask,Fake GPU 4,9.0\n")
    with pytest.raises(ValueError, match="no rows at the ResNet-50 shapes"):
        ingest.ingest(out, timings)
    (out / "bench_repeat_1.csv").write_text(header + "structdrop dropblock,32x512x28x28,"
                                            "fwd+bwd,0.000142,1.647,floor x*mask,Fake GPU 4,9.0\n")
    with pytest.raises(ValueError, match="no floor x\\*mask row for fwd\\+bwd at 32x512x28x28"):
        ingest.ingest(out, timings)
    (out / "bench_repeat_1.csv").write_text("framework,op,pass,case,ratio\n")  # run_all's CSV
    with pytest.raises(ValueError, match="not a bench_torch.py CSV"):
        ingest.ingest(out, timings)
    (out / "gpu_fake_gpu_4.csv").unlink()  # a repeat alone folds into the GPU it names
    (out / "bench_repeat_1.csv").write_text(
        header + "floor x*mask,32x512x28x28,fwd+bwd,8.6e-05,1.000,floor x*mask,Fake GPU 4,9.0\n")
    assert "csv" not in ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_4_kernels.json").read_text())
    assert kernels["benchmark_repeats"]["runs"][0]["modes"]["fwd+bwd"]["32x512x28x28"] == {
        "floor_ms": 0.086, "floor x*mask": 1.0}
    (out / "gpu_fake_gpu_4.csv").write_text("framework,op,pass,case,ratio\n")
    (out / "bench_repeat_1.csv").write_text(  # another GPU's run: not folded into this one's
        header + "floor x*mask,32x512x28x28,fwd+bwd,8.6e-05,1.000,floor x*mask,Other GPU,9.0\n")
    with pytest.raises(ValueError, match="measured 'Other GPU', not the GPU of gpu_fake_gpu_4"):
        ingest.ingest(out, timings)


def test_flat_call_refuses_without_cuda_or_plan(capsys):
    """flat_call.py needs a CUDA device and says so; its flattened call refuses an input that
    has no plan (here a CPU tensor no call has planned) instead of running something else."""
    torch = pytest.importorskip("torch")
    flat = _bench_module("flat_call")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the script itself")
    with pytest.raises(SystemExit):
        flat.main([])
    assert "needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no usable plan"):
        flat.flat_dropblock(torch.randn(2, 3, 9, 9), 0.1, 3)


def test_native_call_refuses_without_cuda(capsys):
    """native_call.py times CUDA steps only and says so on a machine without CUDA."""
    torch = pytest.importorskip("torch")
    native = _bench_module("native_call")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the script itself")
    with pytest.raises(SystemExit):
        native.main([])
    assert "needs a CUDA device" in capsys.readouterr().err


def test_ingest_gpu_folds_flat_call_runs(tmp_path):
    """A folder with flat_call.py's runs (and gpu.txt) folds into the JSON of the GPU they name,
    one run per file in order, with the software and the method; other entries kept."""
    import json
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    (out / "gpu.txt").write_text("name\nFake GPU 5\ntorch 9.0 triton 9.1\n")
    for i in (1, 2):
        (out / f"flat_call_{i}.json").write_text(json.dumps(
            {"device": "Fake GPU 5", "torch": "9.0", "rounds": 11, "n": 60,
             "steps_us": {"32x512x28x28": {"floor x*mask": 80.0, "dropblock": 130.0 + i,
                                           "flattened": 118.0}},
             "same": {"32x512x28x28": True}, "extra": 1}))
    (timings / "gpu_fake_gpu_5_kernels.json").write_text(json.dumps({"device_us": {"a": 1}}))
    wrote = ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_5_kernels.json").read_text())
    assert "csv" not in wrote and kernels["device_us"] == {"a": 1}
    runs = kernels["flat_call"]["runs"]
    assert [r["steps_us"]["32x512x28x28"]["dropblock"] for r in runs] == [131.0, 132.0]
    assert all(r["same"] == {"32x512x28x28": True} and "extra" not in r for r in runs)
    assert kernels["flat_call"]["software"] == "torch 9.0, triton 9.1"
    assert "flat_call.py" in kernels["flat_call"]["method"]


def test_ingest_gpu_folds_native_call_runs(tmp_path):
    """native_call.py's runs fold under native_call, one per file, checked to be of the GPU
    they land in; gpu.txt's line about the native extension (after the torch line) goes into
    the software."""
    import json
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    (out / "gpu.txt").write_text("name\nFake GPU 5\ntorch 9.0 triton 9.1\n"
                                 "native extension: True []\n")
    run = {"device": "Fake GPU 5", "torch": "9.0", "rounds": 9, "n": 50, "build_s": 23.4,
           "steps_us": {"32x512x28x28": {"floor x*mask": 80.0, "dropblock, native": 100.0,
                                         "dropblock, Python plan": 140.0}}, "extra": 1}
    (out / "native_call.json").write_text(json.dumps(run))
    ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_5_kernels.json").read_text())
    (got,) = kernels["native_call"]["runs"]
    assert got["build_s"] == 23.4 and "extra" not in got
    assert got["steps_us"]["32x512x28x28"]["dropblock, native"] == 100.0
    assert kernels["native_call"]["software"] == "torch 9.0, triton 9.1; native planned call built"
    assert "native_call.py" in kernels["native_call"]["method"]
    (out / "native_call_2.json").write_text(json.dumps(dict(run, device="Other GPU")))
    with pytest.raises(ValueError, match="native_call or bench_repeat run measured 'Other GPU'"):
        ingest.ingest(out, timings)
    (out / "gpu.txt").write_text("name\nFake GPU 5\n")
    with pytest.raises(ValueError, match="expected a line 'torch X triton Y'"):
        ingest.software(out)


def test_ingest_gpu_folds_host_os_and_host_pieces(tmp_path):
    """A folder with only host_os.py's and host_pieces.py's files (and gpu.txt) folds into the
    JSON of the GPU they name, each under its own entry with the software and the method, the
    JSON's other entries kept."""
    import json
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    (out / "gpu.txt").write_text("name\nFake GPU 3\ntorch 9.0 triton 9.1\n")
    steps = {"1x1x16x16": {"floor x*mask": {"wall_us": 80.0, "process kernel_us": 0.1}}}
    (out / "host_os.json").write_text(json.dumps(
        {"device": "Fake GPU 3", "n": 400, "rounds": 5, "steps": steps}))
    for i in (1, 2):
        (out / f"host_pieces_{i}.json").write_text(json.dumps(
            {"device": "Fake GPU 3", "shape": "2x4x16x16", "n": 1000, "rounds": 5,
             "driver_launch_equal": None if i == 1 else True,
             "host_us": {"torch.empty_like(x)": 1.5 + i}}))
    (timings / "gpu_fake_gpu_3_kernels.json").write_text(json.dumps({"device_us": {"a": 1}}))
    wrote = ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_3_kernels.json").read_text())
    assert "csv" not in wrote and kernels["device_us"] == {"a": 1}
    assert kernels["host_os"]["runs"] == [steps]
    assert kernels["host_os"]["software"] == "torch 9.0, triton 9.1"
    assert "--n 400" in kernels["host_os"]["method"]
    runs = kernels["host_pieces"]["runs"]
    assert [r["host_us"]["torch.empty_like(x)"] for r in runs] == [2.5, 3.5]
    assert [r["driver_launch_equal"] for r in runs] == [None, True]
    assert "2x4x16x16" in kernels["host_pieces"]["method"]


def test_ingest_gpu_folds_a_tune_round(tmp_path):
    """A folder with only gpu_tune.py's triton_config.json (and gpu.txt) folds into the JSON of
    the GPU it names: each kernel's time at the package's launch parameters, every swept
    configuration, the best one; the device_us written by hand before moves aside once."""
    import json
    pytest.importorskip("torch")
    ingest = _bench_module("ingest_gpu")
    out, timings = tmp_path / "out", tmp_path / "timings"
    out.mkdir()
    timings.mkdir()
    (out / "gpu.txt").write_text("name\nFake GPU 2\ntorch 9.0 triton 9.1\n")
    shapes = ingest.RESNET
    configs = {"rows": ["128/1", "256/4"], "apply_rows": ["2048/4", "4096/8"],
               "mask": ["1024/1", "1024/4"], "apply": ["2048/4"]}
    sweeps = {part: {cfg: {s: 10.0 * (i + 1) + j + 0.04 for j, s in enumerate(shapes)}
                     for i, cfg in enumerate(cfgs)} for part, cfgs in configs.items()}
    sweeps["floor"] = {s: 40.0 + j for j, s in enumerate(shapes)}
    (out / "triton_config.json").write_text(json.dumps(
        {"device": "Fake GPU 2", "torch": "9.0", "config": {"APPLY_BLOCK": 4096},
         "host_us": {"x * mask (tiny)": 9.0}, "device_us": sweeps}))
    (timings / "gpu_fake_gpu_2_kernels.json").write_text(json.dumps(
        {"device_us": {"a": 1}, "method": "by hand"}))
    params = ingest.package_params()
    wrote = ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_2_kernels.json").read_text())
    assert "csv" not in wrote and not list(timings.glob("*.csv"))
    assert kernels["device_us_earlier"] == {"a": 1}
    for j, s in enumerate(shapes):
        row = kernels["device_us"][s]
        assert row["floor x*mask"] == 40.0 + j
        assert row["row-word mask kernel"] == round(sweeps["rows"][params["rows"]][s], 1)
        assert row["byte mask kernel"] == round(sweeps["mask"][params["mask"][s]][s], 1)
        assert row["row-word product kernel"] == round(
            sweeps["apply_rows"][params["apply_rows"]][s], 1)
    assert kernels["sweeps_us"]["apply_rows"]["4096/8"][shapes[0]] == 20.0
    assert kernels["tune"]["best"] == {"APPLY_BLOCK": 4096}
    assert kernels["tune"]["software"] == "torch 9.0, triton 9.1"
    assert kernels["method"].startswith("device_us and sweeps_us: see tune.method")
    ingest.ingest(out, timings)  # again: the hand-written entry is not replaced by the sweep's
    assert json.loads((timings / "gpu_fake_gpu_2_kernels.json").read_text())[
        "device_us_earlier"] == {"a": 1}
    del sweeps["apply"]  # a kernel not swept at the package's parameters is left out
    (out / "triton_config.json").write_text(json.dumps(
        {"device": "Fake GPU 2", "config": {}, "host_us": {}, "device_us": sweeps}))
    kernels = ingest.ingest(out, timings)
    assert "byte product kernel" not in kernels["device_us"][shapes[0]]
    (out / "triton_config.json").write_text(json.dumps(  # gpu_tune.py --host-only
        {"device": "Fake GPU 2", "host_us": {"x * mask (tiny)": 8.0}}))
    kernels = ingest.ingest(out, timings)
    assert "device_us" not in kernels and kernels["tune"]["host_us"] == {"x * mask (tiny)": 8.0}
    (out / "triton_config.json").unlink()  # a folder with only the channels_last steps
    steps = {"32x512x28x28": {"floor x*mask, graph": 70.0, "dropblock, channels_last, graph": 140.0}}
    (out / "channels_last.json").write_text(json.dumps(
        {"device": "Fake GPU 2", "torch": "9.0", "rounds": 5, "n": 40, "steps_us": steps}))
    ingest.ingest(out, timings)
    kernels = json.loads((timings / "gpu_fake_gpu_2_kernels.json").read_text())
    assert kernels["channels_last"]["steps_us"] == steps
    assert "--rounds 5 --n 40" in kernels["channels_last"]["method"]
    assert kernels["tune"]["host_us"] == {"x * mask (tiny)": 8.0}  # the rest stays


def test_compile_torch_smoke(tmp_path):
    """compile_torch.py on the CPU with dynamo's eager backend: every op is timed or its failure
    recorded, a compiled DropBlock's output passes the script's check, and a check that cannot
    hold (a tolerance below zero) is reported as a failure, not timed."""
    pytest.importorskip("torch")
    import json
    out = tmp_path / "compile.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "compile_torch.py"), "--device", "cpu",
            "--backend", "eager", "--modes", "default", "--shapes", "4x8x32x32", "--rounds", "1",
            "--n", "1", "--tolerance", "0.1", "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["shapes"]["4x8x32x32"]
    assert row["failed"] == {}
    assert set(row["step_us"]) == {"floor x*mask, eager", "dropblock, eager",
                                   "floor x*mask, compiled default", "dropblock, compiled default",
                                   "dropblock not traced, compiled default"}
    assert all(us > 0 for us in row["step_us"].values())
    assert abs(row["dropped_fraction"]["dropblock, compiled default"] - 0.1) <= 0.1
    proc = subprocess.run(args[:-4] + ["--tolerance", "-1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    row = json.loads(out.read_text())["shapes"]["4x8x32x32"]
    assert set(row["failed"]) == {"dropblock, compiled default",
                                  "dropblock not traced, compiled default"}
    assert "dropblock, compiled default" not in row["step_us"]
