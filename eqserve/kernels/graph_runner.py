"""Whole-batch dense solves for larger states: K fused steps per replay of a captured CUDA graph.

One graph per padded batch size (powers of two, as vLLM and SGLang pad their decode batches);
padding rows get a zero budget, so they stop before their first step and are never stepped. Each
replay runs K fused steps, which skip rows that have stopped and take every decision on the
device, then reduces the stop codes to one flag that it copies to pinned host memory. The host
keeps IN_FLIGHT replays queued and reads each flag once its replay is done, so the GPU need not
wait for the host between replays; a batch that has stopped costs at most IN_FLIGHT − 1 replays
in which every program leaves at once. The state ping-pongs between two buffers (K is even), so a
row's final state lies in the buffer of its iteration count's parity. Without CUDA
(TRITON_INTERPRET=1) the same K launches run with no graph.
"""

from __future__ import annotations

import torch
import triton

from eqserve.kernels.dense_step import Scratch, StepBuffers, StepConfig, launch, step_config
from eqserve.kernels.reference import SolveOut, Stop

IN_FLIGHT = 2
"""Replays queued ahead of the host's read of a stop flag."""


class _Batch:
    """The static buffers of one padded batch size and, on CUDA, the graph of K steps over them."""

    def __init__(
        self,
        w: torch.Tensor,
        rows: int,
        dtype: torch.dtype,
        inj_dtype: torch.dtype,
        k: int,
        config: StepConfig | None,
    ) -> None:
        dev, n = w.device, w.shape[0]
        bf16 = w.dtype == dtype == torch.bfloat16
        self.w, self.k, self.config = w, k, config or step_config(n, rows, bf16)
        self.ys = torch.zeros(2, rows, n, dtype=dtype, device=dev)
        self.inj = torch.zeros(rows, n, dtype=inj_dtype, device=dev)
        self.beta = torch.ones(rows, device=dev)
        self.tol = torch.zeros(rows, dtype=torch.float64, device=dev)
        self.rel_mode = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.max_iters = torch.zeros(rows, dtype=torch.long, device=dev)
        self.iters = torch.zeros(rows, dtype=torch.long, device=dev)
        self.first = torch.zeros(rows, dtype=torch.float64, device=dev)
        self.code = torch.full((rows,), int(Stop.MAX_ITERS), dtype=torch.long, device=dev)
        self.abs_res = torch.full((rows,), float("nan"), device=dev)
        self.rel_res = torch.full((rows,), float("nan"), device=dev)
        self.scratch = Scratch.new(rows, dev, n, self.config.split_k)
        self.any_running = torch.zeros((), dtype=torch.bool, device=dev)
        self.flags = torch.zeros(IN_FLIGHT, dtype=torch.bool, pin_memory=dev.type == "cuda")
        self.events = [torch.cuda.Event() for _ in range(IN_FLIGHT)] if dev.type == "cuda" else []
        self.bufs = StepBuffers.ping_pong(
            self.ys[0], self.ys[1], self.inj, self.beta, self.tol, self.rel_mode, self.max_iters,
            self.iters, self.first, self.code, self.abs_res, self.rel_res,
            torch.arange(rows, dtype=torch.int32, device=dev),
        )  # fmt: skip
        self.graph: torch.cuda.CUDAGraph | None = None
        if dev.type == "cuda":
            self._run()  # compiles and loads the kernel; every row is stopped, so nothing changes
            torch.cuda.synchronize(dev)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._run()

    def _run(self) -> None:
        for i in range(self.k):
            launch(self.w, self.bufs[i % 2], self.scratch, self.config)
        torch.any(self.code == int(Stop.RUNNING), out=self.any_running)

    def replay(self, slot: int) -> None:
        """Queue K more steps of every running row; flag `slot` says, once they are done, whether
        any row still runs."""
        if self.graph is None:
            self._run()
        else:
            self.graph.replay()
        self.flags[slot].copy_(self.any_running, non_blocking=True)
        if self.events:
            self.events[slot].record()

    def running(self, slot: int) -> bool:
        """Whether any row ran on after the replay that wrote flag `slot` (waits for that replay)."""
        if self.events:
            self.events[slot].synchronize()
        return bool(self.flags[slot])

    def load(
        self,
        y0: torch.Tensor,
        inj: torch.Tensor,
        beta: torch.Tensor,
        tol: torch.Tensor,
        rel_mode: torch.Tensor,
        max_iters: torch.Tensor,
    ) -> None:
        """Start a solve of len(y0) rows; the rows past them are padding with no budget."""
        b = y0.shape[0]
        for static, value, pad in (
            (self.ys[0], y0, 0.0),
            (self.inj, inj, 0.0),
            (self.beta, beta.reshape(b), 1.0),
            (self.tol, tol, 0.0),
            (self.rel_mode, rel_mode, False),
            (self.max_iters, max_iters, 0),
        ):
            static[:b].copy_(value)
            static[b:].fill_(pad)
        self.code.copy_(torch.where(self.max_iters > 0, int(Stop.RUNNING), int(Stop.MAX_ITERS)))
        self.iters.zero_()
        self.first.zero_()
        self.abs_res.fill_(float("nan"))
        self.rel_res.fill_(float("nan"))

    def result(self, b: int) -> SolveOut:
        """The first b rows' outcome, copied out of the static buffers."""
        odd = (self.iters[:b] % 2 == 1).unsqueeze(1)
        return SolveOut(
            torch.where(odd, self.ys[1, :b], self.ys[0, :b]),
            self.iters[:b].clone(),
            self.abs_res[:b].clone(),
            self.rel_res[:b].clone(),
            self.code[:b].clone(),
        )


class GraphRunner:
    """reference.dense_solve for whole batches with one weight matrix W (kept by reference: it must
    not be reallocated while the runner lives), K steps per graph replay."""

    def __init__(
        self, w: torch.Tensor, *, steps_per_replay: int = 8, config: StepConfig | None = None
    ) -> None:
        if steps_per_replay < 2 or steps_per_replay % 2:
            raise ValueError(
                f"steps_per_replay must be even and ≥ 2 (the state ping-pongs), got {steps_per_replay}"
            )
        self.w = w.contiguous()
        self.k = steps_per_replay
        self.config = config
        self._batches: dict[tuple[int, torch.dtype, torch.dtype], _Batch] = {}

    def __call__(
        self,
        y0: torch.Tensor,
        inj: torch.Tensor,
        beta: torch.Tensor,
        tol: torch.Tensor,
        rel_mode: torch.Tensor,
        max_iters: torch.Tensor,
    ) -> SolveOut:
        """Solve every row from y0 until its stop code; the host reads one flag per replay, IN_FLIGHT
        replays behind the GPU."""
        b = y0.shape[0]
        replays = triton.cdiv(int(max_iters.max()), self.k) if b else 0
        key = (triton.next_power_of_2(b), y0.dtype, inj.dtype)
        if key not in self._batches:
            self._batches[key] = _Batch(self.w, key[0], y0.dtype, inj.dtype, self.k, self.config)
        batch = self._batches[key]
        batch.load(y0, inj, beta, tol, rel_mode, max_iters)
        for i in range(replays):
            if i >= IN_FLIGHT and not batch.running(i % IN_FLIGHT):
                break
            batch.replay(i % IN_FLIGHT)
        return batch.result(b)
