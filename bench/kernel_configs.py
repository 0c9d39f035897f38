"""Kernel-only time of fused-step configurations at large n, to choose dense_step.LARGE_CONFIGS (GPU).

For n ∈ {1024, 2048, 4096} and a few batch sizes per dtype, every candidate configuration (the shipped
ones and the split-K grid below) runs 16 fused steps captured in one CUDA graph, no host work in
between, every row running throughout (tol < 0) on random data; the time per step is the median of
the graph's replays, timed with CUDA events. Also the fraction of copy bandwidth the step's least
bytes reach (W once, y read and written, inj read), and the fixed rule's pick against the best.
Prints a table per shape, then one JSON line. Needs only torch and Triton, and a CUDA device.

    python bench/kernel_configs.py [--budget-s S]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import triton
from device_copy import copy_bandwidth

from eqserve.kernels import dense_step
from eqserve.kernels.dense_step import StepConfig

SHAPES = [
    ("bf16", 4096, 1),
    ("bf16", 4096, 16),
    ("fp32", 1024, 64),
    ("fp32", 2048, 64),
    ("fp32", 2048, 16),
    ("fp32", 4096, 16),
    ("fp32", 4096, 256),
    ("fp32", 1024, 256),
    ("fp32", 4096, 1),
    ("fp32", 4096, 64),
    ("fp32", 2048, 256),
    ("bf16", 4096, 64),
    ("bf16", 4096, 256),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STEPS = 16
"""Fused steps per captured graph."""


def sixteen_rows(*settings: tuple[int, int, int, int, int]) -> list[StepConfig]:
    """16-row configurations from (column block, K step, warps, stages, slices)."""
    return [StepConfig(16, bn, bk, num_warps=w, num_stages=st, split_k=x) for bn, bk, w, st, x in settings]


FEW_ROWS = sixteen_rows(
    (64, 128, 4, 3, 2),
    (64, 128, 4, 3, 4),
    (64, 128, 4, 3, 8),
    (64, 256, 8, 3, 2),
    (64, 256, 8, 3, 4),
    (32, 128, 4, 4, 4),
    (32, 256, 4, 3, 4),
    (128, 128, 8, 3, 4),
)
"""bf16 candidates for up to 16 rows: the leaders of a wider grid timed on an H200, and their
neighbours."""

MANY_ROWS = [StepConfig(64, 64, 64, num_warps=8, num_stages=4, split_k=x) for x in (1, 2, 4)] + [
    StepConfig(64, 128, 64, num_warps=8, num_stages=3, split_k=2)
]
"""bf16 candidates for 64 and more rows."""

FEW_ROWS_FP32 = sixteen_rows(
    (64, 64, 8, 3, 4),
    (64, 64, 8, 4, 2),
    (32, 128, 8, 3, 4),
    (32, 128, 8, 4, 4),
    (32, 64, 4, 3, 2),
    (32, 64, 4, 3, 4),
    (32, 64, 4, 4, 4),
    (64, 32, 4, 4, 4),
    (64, 32, 8, 4, 4),
    (128, 64, 8, 3, 4),
)
"""TF32×3-dot candidates for up to 16 rows in fp32 (the fp32 operands double the registers and shared
memory of bf16's tiles: these are the split-K tiles that compile for sm_90 without spills)."""

MANY_ROWS_FP32 = [StepConfig(64, 64, 32, num_warps=8, num_stages=st) for st in (3, 4, 5)] + [
    StepConfig(64, 64, 32, num_warps=8, num_stages=4, split_k=2),
    StepConfig(32, 64, 64, num_warps=8, num_stages=4),
    StepConfig(32, 64, 32, num_warps=8, num_stages=4),
    StepConfig(32, 64, 64, num_warps=8, num_stages=3, split_k=2),
]
"""TF32×3-dot candidates for 64 and more rows in fp32."""


def candidates(dtype: str, rows: int) -> list[StepConfig]:
    """The configurations to time for a shape: the shipped ones of its dtype and the grid for its rows."""
    bf16 = dtype == "bf16"
    if bf16:
        grid = FEW_ROWS if rows <= 16 else MANY_ROWS
    else:
        grid = FEW_ROWS_FP32 if rows <= 16 else MANY_ROWS_FP32
    return list(dict.fromkeys([*dense_step.STEP_CONFIGS[bf16], *grid]))


class Shape:
    """Weights, state and per-row settings of one shape, under which no row ever stops."""

    def __init__(self, dtype: torch.dtype, n: int, b: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(n + b)
        self.n, self.b = n, b
        self.w = (torch.randn(n, n, generator=g, device="cuda") * (0.3 / math.sqrt(n))).to(dtype)
        self.ys = [(torch.randn(b, n, generator=g, device="cuda") * 0.5).to(dtype) for _ in (0, 1)]
        self.inj = (torch.randn(b, n, generator=g, device="cuda") * 0.5).to(dtype)
        self.beta = torch.full((b,), 0.9, dtype=dtype, device="cuda")
        self.tol = torch.full((b,), -1.0, dtype=torch.float64, device="cuda")
        self.rel_mode = torch.zeros(b, dtype=torch.bool, device="cuda")
        self.max_iters = torch.full((b,), 2**40, device="cuda")
        self.iters = torch.zeros(b, dtype=torch.long, device="cuda")
        self.first = torch.zeros(b, dtype=torch.float64, device="cuda")
        self.code = torch.zeros(b, dtype=torch.long, device="cuda")
        self.res = [torch.empty(b, device="cuda") for _ in (0, 1)]
        self.rows = torch.arange(b, dtype=torch.int32, device="cuda")

    def buffers(self) -> tuple[dense_step.StepBuffers, dense_step.StepBuffers]:
        """The steps ys[0] → ys[1] and back."""
        return dense_step.StepBuffers.ping_pong(
            *self.ys, self.inj, self.beta, self.tol, self.rel_mode, self.max_iters, self.iters,
            self.first, self.code, *self.res, self.rows,
        )  # fmt: skip

    def min_bytes(self) -> int:
        """W once, y read and written, inj read."""
        e = self.w.element_size()
        return self.n * self.n * e + 3 * self.b * self.n * e


def step_us(s: Shape, config: StepConfig) -> float:
    """Median µs per fused step over the replays of a graph of STEPS steps."""
    scratch = dense_step.Scratch.new(s.b, s.w.device, s.n, config.split_k)
    bufs = s.buffers()

    def steps() -> None:
        for i in range(STEPS):
            dense_step.launch(s.w, bufs[i % 2], scratch, config)

    steps()  # compile and load
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        steps()
    graph.replay()
    times = []
    for _ in range(15):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / STEPS)
    if not (s.code == 0).all():
        raise RuntimeError("a row stopped while being timed")
    return statistics.median(times)


def main() -> int:
    """Time every candidate on every shape; print the tables and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=240.0, help="skip the shapes left after this long")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    start = time.perf_counter()
    bandwidth = copy_bandwidth(torch.device("cuda"))
    report = []
    for dname, n, b in SHAPES:
        if time.perf_counter() - start > args.budget_s:
            report.append({"dtype": dname, "n": n, "B": b, "skipped": "time budget spent"})
            continue
        s = Shape(DTYPES[dname], n, b)
        rule = dense_step.step_config(n, b, dname == "bf16")
        times: dict[str, float] = {}
        failed: dict[str, str] = {}
        for c in candidates(dname, b):
            try:
                times[c.name] = round(step_us(s, c), 2)
            except Exception as exc:  # a configuration that does not fit must not lose the others
                failed[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        best = min(times, key=times.__getitem__)
        row = {
            "dtype": dname,
            "n": n,
            "B": b,
            "us": times,
            "failed": failed,
            "best": best,
            "best_roofline": round(s.min_bytes() / (times[best] * 1e-6) / bandwidth, 3),
            "rule": rule.name,
            "rule_roofline": round(s.min_bytes() / (times[rule.name] * 1e-6) / bandwidth, 3)
            if rule.name in times
            else None,
        }
        report.append(row)
        print(f"\n{dname} n={n} B={b}  (rule {rule.name})")
        for name, us in sorted(times.items(), key=lambda kv: kv[1]):
            roof = s.min_bytes() / (us * 1e-6) / bandwidth
            mark = "  <- rule" if name == rule.name else ""
            print(f"  {name:28} {us:9.2f} µs  roof {roof:5.2f}{mark}")
        for name, why in failed.items():
            print(f"  {name:28} failed: {why}")
        del s
        torch.cuda.empty_cache()
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "triton": triton.__version__,
                "copy_GBps": round(bandwidth / 1e9, 1),
                "steps_per_graph": STEPS,
                "shapes": report,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
