"""Compile every shipped kernel configuration ahead of time for sm_90 (H100/H200) on this machine.

No GPU needed: Triton's compiler with a cuda:90 target and its bundled ptxas. Each is compiled with
no divisibility hints, the worst case a launch can meet (a state size that is not a multiple of 16,
an unaligned view); aligned launches specialise into code with fewer registers. Prints, per
configuration, shared memory (bytes), registers per thread, spilled bytes and whether it fits
(≤ 227 KB shared memory, no spills); with --json, then one JSON line
{"kernels": [{name, smem, regs, spills, fits}, ...]}. Exit status 1 where a configuration does not fit.

    python bench/kernels_aot.py [--json] [--jobs N]
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be real JIT functions to compile

import argparse
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from eqserve.kernels import anderson, dense_step, epilogue, persistent
from eqserve.kernels.configs import Shipped

TARGET = GPUTarget("cuda", 90, 128)
SMEM_LIMIT = 227 * 1024
"""Shared memory one block may use on sm_90."""


def ptxas() -> str:
    """The ptxas Triton compiles sm_90 code with (it ships its own)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        return get_ptxas(TARGET.arch).path
    except TypeError:  # Triton before 3.5 takes no architecture
        return get_ptxas().path


def shipped() -> list[Shipped]:
    """Every configuration the launchers may pick."""
    return dense_step.shipped() + persistent.shipped() + anderson.shipped() + epilogue.shipped()


def _usage(ptx: str) -> tuple[int, int, int]:
    """(registers, spilled bytes, static shared bytes) from ptxas -v on the kernel's PTX."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # Triton's own flags, so that the register allocation is the one it ships.
        cmd = [
            ptxas(),
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={arch.group(1) if arch else 'sm_90a'}",
        ]
        log = subprocess.run(
            [*cmd, str(src), "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True, check=True
        )
    text = log.stdout + log.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    smem = re.search(r"(\d+) bytes smem", text)
    return regs, spills, int(smem.group(1)) if smem else 0


def compile_one(index: int) -> dict:
    """Compile shipped()[index] for sm_90 and measure it."""
    s = shipped()[index]
    src = ASTSource(fn=s.kernel, signature=s.signature, constexprs=s.constexprs)
    k = triton.compile(src, target=TARGET, options={"num_warps": s.num_warps, "num_stages": s.num_stages})
    regs, spills, static_smem = _usage(k.asm["ptx"])
    smem = k.metadata.shared + static_smem
    return {
        "name": s.name,
        "smem": smem,
        "regs": regs,
        "spills": spills,
        "fits": smem <= SMEM_LIMIT and spills == 0,
    }


def main() -> int:
    """Compile, print the table (and the JSON line); 1 where a configuration does not fit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiles in parallel")
    args = parser.parse_args()
    count = len(shipped())
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(compile_one, range(count)))
    width = max(len(r["name"]) for r in rows)
    print(f"{'kernel':<{width}}  {'smem B':>8}  {'regs':>4}  {'spills':>6}  fits")
    for r in rows:
        fits = "yes" if r["fits"] else "NO"
        print(f"{r['name']:<{width}}  {r['smem']:>8}  {r['regs']:>4}  {r['spills']:>6}  {fits}")
    if args.json:
        print(json.dumps({"kernels": rows}))
    return 0 if all(r["fits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
