"""Which CPU operation rounds differently on this machine? Fingerprints of chapter 9's arithmetic.

    python scripts/arith_fingerprint.py            # print this machine's fingerprints
    python scripts/arith_fingerprint.py --record "AMD EPYC"   # also store them in the records

Chapter 9 pins the CPU code paths (one thread, PyTorch's kernels at AVX2, MKL's
vendor-independent path, oneDNN off) and still an Intel and an AMD machine end some trainings
with other accuracies. This script runs each kind of operation the training uses, alone, on
fixed inputs drawn from a seeded generator (the convolutions at the shapes of the chapter's
networks), then twenty training steps of its small network, and prints a short SHA-256 digest
of each result's bytes. Run it on two machines and compare: a line that differs names an
operation whose results are not the same on both. With ``--record NAME`` the digests are stored
under that machine in ``structdrop_tutorial/data/records/experiment_runs.json`` (key
``"arithmetic"``), and lines that differ from another recorded machine are marked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

if platform.machine().lower() in ("x86_64", "amd64"):     # chapter 9's pins, before torch
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE,STRICT")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_experiment import RECORDS, compact  # noqa: E402  (the records file and its layout)


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _conv(out: dict, g: torch.Generator, cin: int, cout: int, side: int, batch: int = 50) -> None:
    """A 3x3 convolution of the chapter's networks: forward, and its three gradients."""
    x = torch.rand(batch, cin, side, side, generator=g)
    w = (torch.randn(cout, cin, 3, 3, generator=g) * 0.1).requires_grad_()
    b = (torch.randn(cout, generator=g) * 0.1).requires_grad_()
    label = f"conv {cin}->{cout} at {side}x{side}, batch {batch}"
    y = F.conv2d(x.requires_grad_(), w, b, padding=1)
    out[f"{label}: forward"] = digest(y)
    y.backward(torch.randn(y.shape, generator=g))
    out[f"{label}: gradients of input, weight, bias"] = digest(x.grad, w.grad, b.grad)


def _small_network_steps(g: torch.Generator, steps: int = 20) -> torch.Tensor:
    """Chapter 9's small network without a regularizer, trained for a few Adam steps on random
    images: every operation of a training step together, in the chapter's order."""
    convs = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, padding=1),
             torch.nn.Conv2d(16, 32, 3, padding=1)]
    head = torch.nn.Linear(32 * 7 * 7, 10)
    params = [p for m in (*convs, head) for p in m.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    opt = torch.optim.Adam(params, lr=2e-3)
    for _ in range(steps):
        x = torch.rand(50, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (50,), generator=g)
        h = F.max_pool2d(F.relu(convs[0](x)), 2)
        h = F.max_pool2d(F.relu(convs[1](h)), 2)
        loss = F.cross_entropy(head(F.relu(convs[2](h)).flatten(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])


def fingerprints() -> dict:
    from structdrop_tutorial import torch as sdt

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    g = torch.Generator().manual_seed(0)
    out = {}
    for cin, cout, side in ((1, 8, 28), (8, 16, 14), (16, 32, 7), (16, 16, 14)):
        _conv(out, g, cin, cout, side)
    _conv(out, g, 8, 16, 14, batch=1000)                       # evaluation on the test digits
    x = torch.rand(50, 8, 14, 14, generator=g)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.1
    with torch.backends.nnpack.flags(enabled=False):
        out["conv 8->16 at 14x14, batch 50: forward with NNPACK off"] = digest(
            F.conv2d(x, w, padding=1))
    a = torch.randn(50, 1568, generator=g).requires_grad_()
    lw = (torch.randn(10, 1568, generator=g) * 0.02).requires_grad_()
    z = F.linear(a, lw)
    out["linear 1568->10: forward"] = digest(z)
    z.backward(torch.randn(50, 10, generator=g))
    out["linear 1568->10: gradients"] = digest(a.grad, lw.grad)
    h = torch.randn(50, 16, 14, 14, generator=g).requires_grad_()
    pooled = F.max_pool2d(F.relu(h), 2)
    pooled.backward(torch.randn(pooled.shape, generator=g))
    out["relu and max_pool2d: forward and gradient"] = digest(pooled, h.grad)
    logits = torch.randn(50, 10, generator=g).requires_grad_()
    loss = F.cross_entropy(logits, torch.randint(0, 10, (50,), generator=g))
    loss.backward()
    out["cross entropy and its gradient"] = digest(loss, logits.grad)
    out["sum of 1e6 values"] = digest(torch.randn(1_000_000, generator=g).sum())
    p = torch.randn(1000, generator=g).requires_grad_()
    opt = torch.optim.Adam([p], lr=2e-3)
    for _ in range(3):
        p.grad = torch.randn(1000, generator=g)
        opt.step()
    out["Adam, three steps"] = digest(p)
    x = torch.rand(50, 16, 14, 14, generator=g)
    masks = torch.Generator().manual_seed(1)
    out["the package's dropout, spatial dropout, DropBlock, DropPath"] = digest(
        sdt.dropout(x, 0.1, seed=masks), sdt.spatial_dropout(x, 0.1, seed=masks),
        sdt.dropblock(x, 0.1, 5, seed=masks), sdt.drop_path(x, 0.1, seed=masks))
    out["small network, 20 Adam steps (all of the above together)"] = digest(
        _small_network_steps(g))
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
        RECORDS.write_text(compact(json.dumps(data, indent=1)) + "\n", encoding="utf-8")
        print(f"stored under {args.record!r}")


if __name__ == "__main__":
    main()
