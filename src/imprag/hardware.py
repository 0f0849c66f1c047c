"""What this machine computes fast, and the dtype `"auto"` means here.

bf16 halves the bytes of every weight and activation, and with native kernels it also multiplies faster:
on an Intel Sapphire Rapids with AMX-BF16, a 2048^3 matmul ran ~2,500 GFLOP/s in bf16 against ~410 in fp32
(2 cores). Without native kernels torch emulates bf16 and is far slower instead: on an AVX2-only AMD EPYC,
0.17 GFLOP/s in bf16 against 11.4 in fp32 (one thread), so a bf16 default made indexing ~5x slower there.
Between the two sit CPUs with AVX512_BF16 but no AMX (AMD Zen 4): bf16 dot-product instructions exist,
and whether they win depends on the shapes. So `"auto"` resolves as follows:

- CUDA: bf16 where the GPU has native bf16 (`torch.cuda.is_bf16_supported(including_emulation=False)`:
  Ampere and newer), else fp32. (Written, not run: no GPU here.)
- CPU, decided by its flags: AMX-BF16 -> bf16; an x86 CPU without AVX512_BF16 -> fp32 (no native bf16).
- CPU, otherwise (AVX512_BF16 without AMX, a non-x86 CPU, flags unknown): measured. A matmul of model
  shape (a decoder MLP's two projections over a batch of tokens) in both dtypes, medians of a few runs;
  bf16 only when it is at least `BF16_MARGIN` times faster (fp32 is the more exact, so it wins ties). A
  tiny bf16 matmul first stops the measurement early where bf16 is emulated.

A measurement is made once per machine and cached in `cache_dir()/machine.json` under a key of everything
that can change its result (CPU model and flags, torch version and kernel capability, the
`ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` overrides, the rule's version), one entry per key. A file
that is corrupt is ignored and re-measured, never trusted; a key without an entry is measured. With an ISA
override set, the flags are not trusted either (they no longer say which kernels run): it is measured.
An explicit dtype always wins over all of this. Known gap: torchrun ranks that find no cached entry
measure at the same moment and decide each on its own; near the margin they could disagree.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from imprag.io import atomic_write_text, cache_dir

__all__ = [
    "BF16_MARGIN",
    "DTYPE_CHOICES",
    "CpuInfo",
    "DtypeChoice",
    "auto_choice",
    "auto_dtype",
    "choose_cpu_dtype",
    "cpu_info",
    "describe_machine",
    "resolve_dtype",
    "summary_line",
]

log = logging.getLogger(__name__)

BF16_MARGIN = 1.25
"""bf16 is chosen by measurement only when it runs the model-shaped matmul this many times faster."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""What `--dtype` accepts (the aliases fp32/bf16/fp16 work in the Python API too)."""

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The CPU flags that decide (or explain) bf16 speed; recorded with every benchmark."""
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""Environment variables that change which kernels torch runs, and so what a measurement finds."""


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    flags: frozenset[str]
    """Every flag /proc/cpuinfo lists (empty where it cannot be read: then the dtype is measured)."""


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str
    measured: dict[str, float] | None = None
    """Seconds per matmul by dtype name (medians; best-of-5 of the tiny probe after an early exit), when
    the choice was measured."""

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """This CPU's model name and flags, from /proc/cpuinfo (Linux); elsewhere the flags are unknown."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():  # the first processor's fields (all cores are alike here)
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or platform.processor() or "unknown"
    flags = fields.get("flags") or fields.get("features") or ""  # x86 says flags, ARM says Features
    return CpuInfo(model=model, arch=platform.machine(), flags=frozenset(flags.split()))


def choose_cpu_dtype(info: CpuInfo, measure: Callable[[], dict[str, float]]) -> DtypeChoice:
    """The CPU's fast dtype: by flags where they decide, else by `measure()` (seconds by dtype name).
    With an ISA override set (e.g. ONEDNN_MAX_CPU_ISA=AVX2) the flags no longer say which kernels run, so it
    is measured."""
    overridden = [k for k in ISA_OVERRIDES if k in os.environ]
    if overridden:
        return _measured(info, measure, f"{'/'.join(overridden)} set")
    if "amx_bf16" in info.flags:
        return DtypeChoice(torch.bfloat16, "AMX-BF16: native bf16 matmuls")
    if info.arch in ("x86_64", "AMD64", "i686") and info.flags and "avx512_bf16" not in info.flags:
        return DtypeChoice(torch.float32, "no native bf16 on this CPU")
    return _measured(
        info, measure, "AVX512_BF16 without AMX" if "avx512_bf16" in info.flags else f"{info.arch} CPU"
    )


def _measured(info: CpuInfo, measure: Callable[[], dict[str, float]], what: str) -> DtypeChoice:
    seconds = measure()
    speedup = seconds["float32"] / seconds["bfloat16"]
    if speedup >= BF16_MARGIN:
        return DtypeChoice(torch.bfloat16, f"{what}: bf16 measured {speedup:.2f}x faster", seconds)
    return DtypeChoice(torch.float32, f"{what}: bf16 measured {speedup:.2f}x of fp32, not faster", seconds)


def measure_matmuls(
    rows: int = 256, hidden: int = 768, inner: int = 2048, repeats: int = 5
) -> dict[str, float]:
    """Median seconds of a decoder MLP's up and down projections over `rows` tokens, in fp32 and bf16.

    About 1.6 GFLOP per call: ~10-40 ms in fp32 on 2 cores. A tiny matmul is timed first (best of 5 in each
    dtype); where bf16 is over 10x slower there (emulated bf16: ~70x; native bf16 on that tiny shape:
    1.1-1.4x slower, measured on AMD Zen 4) the large one is skipped and the tiny times are reported."""
    generator = torch.Generator().manual_seed(0)

    def timed(dtype: torch.dtype, n: int, h: int, i: int, count: int, pick=statistics.median) -> float:
        x = torch.randn(n, h, generator=generator).to(dtype)
        up, down = (
            torch.randn(i, h, generator=generator).to(dtype),
            torch.randn(h, i, generator=generator).to(dtype),
        )

        def run() -> None:
            F.linear(F.linear(x, up), down)

        run()  # first call: allocations and kernel selection
        times = []
        for _ in range(count):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return pick(times)

    with torch.inference_mode():
        tiny = {
            name: timed(dt, 32, 128, 256, 5, min)
            for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        }
        if tiny["bfloat16"] > 10 * tiny["float32"]:
            return tiny
        return {
            name: timed(dt, rows, hidden, inner, repeats)
            for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        }


RULE = 1
"""Version of the decision rule (margin, shapes, early exit): a cached decision of another rule is redone."""


def machine_key(info: CpuInfo) -> dict[str, Any]:
    """Everything a cached measurement depends on; a cached result with another key is re-measured.

    Threads are not in it: whether bf16 has native kernels does not change with them, and torchrun ranks
    (OMP_NUM_THREADS=1) must reuse the decision a plain run made, not each make their own."""
    return {
        "rule": RULE,
        "cpu": info.model,
        "arch": info.arch,
        "flags": sorted(f for f in info.flags if f in FLAGS),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ[k] for k in ISA_OVERRIDES if k in os.environ},
    }


def _cached_cpu_choice(info: CpuInfo, path: Path, measure: Callable[[], dict[str, float]]) -> DtypeChoice:
    """The choice for `info`, from the cache file when it holds this machine key's entry (one entry per key:
    an ISA override or another torch version does not evict the plain setup's)."""
    key = machine_key(info)
    slot = json.dumps(key, sort_keys=True)
    entries: dict[str, Any] = {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, dict):
            raise ValueError("not a mapping of machine keys")
        if slot in entries:
            saved = entries[slot]
            return DtypeChoice(DTYPES[saved["dtype"]], saved["reason"] + " (cached)", saved.get("measured"))
        log.debug("%s has no entry for this machine and setup; measuring", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the unreadable %s (%s); measuring again", path, err)
        entries = {}
    measured: list[dict[str, float]] = []

    def recorded() -> dict[str, float]:
        measured.append(measure())
        return measured[-1]

    choice = choose_cpu_dtype(info, recorded)
    if measured:  # a flags-only decision needs no cache
        entries[slot] = {
            "key": key,
            "dtype": choice.name,
            "reason": choice.reason,
            "measured": choice.measured,
        }
        try:
            atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
        except OSError as err:  # a read-only cache only costs a measurement next time
            log.warning("cannot cache the dtype measurement in %s: %s", path, err)
    return choice


_CHOSEN: dict[str, DtypeChoice] = {}


def auto_choice(device: str | torch.device = "cpu") -> DtypeChoice:
    """What `dtype="auto"` means on `device` and why; decided once per process and logged once."""
    kind = torch.device(device).type
    if kind not in _CHOSEN:
        if kind == "cuda":
            fast = torch.cuda.is_bf16_supported(including_emulation=False)  # pre-Ampere emulates it
            choice = DtypeChoice(
                torch.bfloat16 if fast else torch.float32,
                "CUDA with bf16 support" if fast else "CUDA without bf16 support",
            )
        elif kind == "cpu":
            choice = _cached_cpu_choice(cpu_info(), cache_dir() / "machine.json", measure_matmuls)
        else:
            choice = DtypeChoice(torch.float32, f"{kind}: no rule for this device, fp32 is safe")
        log.info("dtype auto -> %s (%s)", choice.name, choice.reason)
        _CHOSEN[kind] = choice
    return _CHOSEN[kind]


def auto_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype `"auto"` resolves to on `device` (see the module docstring)."""
    return auto_choice(device).dtype


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype from a dtype, a name, or `"auto"`/None (this machine's fast dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return auto_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {['auto', *sorted(DTYPES)]}")
    return DTYPES[dtype]


def describe_machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine a result was measured on: CPU, the flags that matter, torch's kernels, threads, and what
    `"auto"` chose. Benchmarks write it with every result; results of different machines are not ratios."""
    info = cpu_info()
    choice = auto_choice(device)
    return {
        **machine_key(info),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "auto_dtype": choice.name,
        "auto_reason": choice.reason,
        **({"auto_measured_s": choice.measured} if choice.measured else {}),
    }


def summary_line(machine: dict[str, Any]) -> str:
    """One line for logs, test headers and CI, e.g. `AMD EPYC | torch 2.13.0+cpu AVX512 | avx2 avx512_bf16
    avx512f | 2 threads | dtype auto -> bfloat16 (AVX512_BF16 without AMX: bf16 measured 2.61x faster)`."""
    flags = " ".join(machine["flags"]) or "flags unknown"
    return (
        f"{machine['cpu']} | torch {machine['torch']} {machine['capability']} | {flags} | "
        f"{machine['threads']} threads | dtype auto -> {machine['auto_dtype']} ({machine['auto_reason']})"
    )
