"""Which CPU operation rounds differently on this machine? Fingerprints of chapter 9's arithmetic.

    python scripts/arith_fingerprint.py            # print this machine's fingerprints
    python scripts/arith_fingerprint.py --record "AMD EPYC"   # also store them in the records

Chapter 9 pins the CPU code paths as the chapter does (one thread, PyTorch's kernels at AVX2,
MKL's vendor-independent path, oneDNN off) and still an Intel and an AMD machine end some
trainings with other accuracies. This script runs each kind of operation the training uses,
alone, on fixed inputs drawn from a seeded generator, and prints a short SHA-256 digest of
each result's bytes. Run it on two machines and compare: the first line that differs names an
operation whose sums are not the same on both. With ``--record NAME`` the digests are stored
under that machine in ``structdrop_tutorial/data/records/experiment_runs.json`` (key
``"arithmetic"``), and lines that differ from another recorded machine are marked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

if platform.machine().lower() in ("x86_64", "amd64"):     # chapter 9's pins, before torch
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE,STRICT")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RECORDS = (Path(__file__).resolve().parents[1] / "structdrop_tutorial" / "data" / "records"
           / "experiment_runs.json")


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprints() -> dict:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 8, 14, 14, generator=g)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.1
    b = torch.randn(16, generator=g) * 0.1
    up = torch.randn(50, 16, 14, 14, generator=g)
    out = {}
    out["conv2d forward (batch 50, NNPACK where PyTorch picks it)"] = digest(
        F.conv2d(x, w, b, padding=1))
    with torch.backends.nnpack.flags(enabled=False):
        out["conv2d forward, NNPACK off (im2col + MKL)"] = digest(F.conv2d(x, w, b, padding=1))
    out["conv2d forward, batch 1 (no NNPACK)"] = digest(F.conv2d(x[:1], w, b, padding=1))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xg, wg, padding=1).backward(up)
    out["conv2d backward, input gradient"] = digest(xg.grad)
    out["conv2d backward, weight gradient"] = digest(wg.grad)
    a = torch.randn(50, 1568, generator=g)
    lw = torch.randn(10, 1568, generator=g) * 0.02
    out["linear forward (MKL sgemm)"] = digest(F.linear(a, lw))
    ag, lwg = a.clone().requires_grad_(), lw.clone().requires_grad_()
    F.linear(ag, lwg).backward(torch.randn(50, 10, generator=g))
    out["linear backward, both gradients"] = digest(ag.grad, lwg.grad)
    logits = torch.randn(50, 10, generator=g).requires_grad_()
    loss = F.cross_entropy(logits, torch.randint(0, 10, (50,), generator=g))
    loss.backward()
    out["cross entropy and its gradient"] = digest(loss, logits.grad)
    out["sum of 1e6 values"] = digest(torch.randn(1_000_000, generator=g).sum())
    out["max_pool2d"] = digest(F.max_pool2d(torch.randn(50, 16, 14, 14, generator=g), 2))
    p = torch.randn(1000, generator=g).requires_grad_()
    opt = torch.optim.Adam([p], lr=2e-3)
    for _ in range(3):
        p.grad = torch.randn(1000, generator=g)
        opt.step()
    out["Adam, three steps"] = digest(p)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", metavar="MACHINE", help="store the digests under this machine")
    args = parser.parse_args(argv)
    mine = fingerprints()
    data = json.loads(RECORDS.read_text(encoding="utf-8"))
    others = {name: rec["arithmetic"] for name, rec in data["machines"].items()
              if "arithmetic" in rec and name != args.record}
    print(f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    for op, value in mine.items():
        differs = [name for name, fp in others.items() if op in fp and fp[op] != value]
        print(f"{value}  {op}" + (f"   DIFFERS from {', '.join(differs)}" if differs else ""))
    if args.record:
        if args.record not in data["machines"]:
            raise SystemExit(f"--record: no machine {args.record!r} in {RECORDS.name}; "
                             f"record its runs first (scripts/record_experiment.py)")
        data["machines"][args.record]["arithmetic"] = mine
        from record_experiment import compact                       # same layout as the runs
        RECORDS.write_text(compact(json.dumps(data, indent=1)) + "\n", encoding="utf-8")
        print(f"stored under {args.record!r}")


if __name__ == "__main__":
    main()
