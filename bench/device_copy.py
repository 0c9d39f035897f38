"""The memory roofline's measure: the bandwidth of a large device-to-device copy (bytes read + written)."""

from __future__ import annotations

import statistics
import time

import torch


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second a 256 MiB copy moves (read + write): on CUDA the median of 10 copies timed with
    CUDA events (a host clock around one copy would add the launch and the sync to its time and
    understate the bandwidth by several per cent); on the CPU the best of 5 by the host clock."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(10 if device.type == "cuda" else 5):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times) if device.type == "cuda" else min(times)
    return 2 * src.numel() / seconds
