"""dtype="auto": every branch of the choice with fake CPUs and fake measurements, the per-machine cache (used,
and ignored when corrupt or another machine's), CUDA, logging once, and an explicit dtype winning."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from imprag import ImpRAG, InputError, LayerSplit, hardware
from imprag.hardware import CpuInfo, choose_cpu_dtype, cpu_info, resolve_dtype

AMX = CpuInfo(
    "Intel Xeon Platinum 8481C", "x86_64", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
)
AVX2 = CpuInfo("AMD EPYC 7B12", "x86_64", frozenset({"avx", "avx2", "fma"}))
ZEN4 = CpuInfo("AMD EPYC 9B14", "x86_64", frozenset({"avx2", "avx512f", "avx512_bf16"}))
ARM = CpuInfo("Neoverse-V1", "aarch64", frozenset({"asimd", "sve", "bf16"}))


def never() -> dict[str, float]:
    raise AssertionError("the flags decide: nothing should be measured")


def timings(fp32: float, bf16: float):
    calls = []

    def measure() -> dict[str, float]:
        calls.append(1)
        return {"float32": fp32, "bfloat16": bf16}

    return measure, calls


@pytest.fixture(autouse=True)
def no_isa_override(monkeypatch) -> None:
    """The flag rules hold without ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA (a test may set them)."""
    for name in hardware.ISA_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


def test_flags_decide_without_measuring() -> None:
    amx = choose_cpu_dtype(AMX, never)
    assert amx.dtype == torch.bfloat16 and "AMX" in amx.reason and amx.measured is None
    avx2 = choose_cpu_dtype(AVX2, never)
    assert avx2.dtype == torch.float32 and avx2.reason == "no native bf16 on this CPU"


@pytest.mark.parametrize(
    "cpu", [ZEN4, ARM, CpuInfo("unknown", "x86_64", frozenset())], ids=["zen4", "arm", "no-flags"]
)
def test_undecided_cpus_are_measured_and_bf16_must_be_clearly_faster(cpu: CpuInfo) -> None:
    fast, calls = timings(fp32=0.010, bf16=0.004)
    chosen = choose_cpu_dtype(cpu, fast)
    assert chosen.dtype == torch.bfloat16 and calls == [1] and "2.50x faster" in chosen.reason
    assert chosen.measured == {"float32": 0.010, "bfloat16": 0.004}
    # 1.1x is within noise of a tie: fp32 (the more exact) wins; slower bf16 obviously loses
    for bf16 in (0.010 / 1.1, 0.5):
        assert choose_cpu_dtype(cpu, timings(0.010, bf16)[0]).dtype == torch.float32
    edge = 0.010 / hardware.BF16_MARGIN
    assert choose_cpu_dtype(cpu, timings(0.010, edge * 0.999)[0]).dtype == torch.bfloat16


def test_cpu_info_reads_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    )
    info = cpu_info(x86)
    assert info.model == "AMD EPYC 9B14" and info.flags == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n")
    assert cpu_info(arm).flags == {"fp", "asimd", "sve", "bf16"}
    assert cpu_info(tmp_path / "missing").flags == frozenset()  # not Linux: measured, not guessed


def test_a_measurement_is_cached_per_machine_and_a_bad_cache_is_measured_again(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    path = tmp_path / "machine.json"
    measure, calls = timings(0.010, 0.004)
    first = hardware._cached_cpu_choice(ZEN4, path, measure)
    (saved,) = json.loads(path.read_text()).values()
    assert calls == [1] and saved["dtype"] == "bfloat16" and saved["key"] == hardware.machine_key(ZEN4)
    again = hardware._cached_cpu_choice(ZEN4, path, never)  # the cache answers
    assert again.dtype == first.dtype and again.reason.endswith("(cached)")

    # another CPU, or an ISA override, has its own entry: measured once, the first entry kept
    other = CpuInfo("Some Other CPU", "x86_64", ZEN4.flags)
    assert hardware._cached_cpu_choice(other, path, timings(0.010, 0.009)[0]).dtype == torch.float32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware._cached_cpu_choice(ZEN4, path, timings(0.010, 0.5)[0]).dtype == torch.float32
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert len(json.loads(path.read_text())) == 3
    assert hardware._cached_cpu_choice(ZEN4, path, never).dtype == torch.bfloat16  # still cached
    assert hardware._cached_cpu_choice(other, path, never).dtype == torch.float32

    for corrupt in (
        "{not json",
        '["a list"]',
        json.dumps({json.dumps(saved["key"], sort_keys=True): {"dtype": "int3"}}),
    ):
        path.write_text(corrupt)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="imprag.hardware"):
            assert hardware._cached_cpu_choice(ZEN4, path, measure).dtype == torch.bfloat16
        assert "ignoring the unreadable" in caplog.text, corrupt
    assert len(calls) == 4 and next(iter(json.loads(path.read_text()).values()))["dtype"] == "bfloat16"

    flags_only = tmp_path / "flags.json"
    hardware._cached_cpu_choice(AVX2, flags_only, never)
    assert not flags_only.exists()  # nothing measured, nothing to cache


def test_an_isa_override_makes_even_amx_measured(monkeypatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN told not to use AMX / AVX512_BF16
    emulated, calls = timings(0.010, 0.7)
    chosen = choose_cpu_dtype(AMX, emulated)
    assert chosen.dtype == torch.float32 and calls == [1] and "ONEDNN_MAX_CPU_ISA set" in chosen.reason
    assert choose_cpu_dtype(AVX2, timings(0.010, 0.004)[0]).dtype == torch.bfloat16  # flags not trusted


@pytest.mark.usefixtures("one_thread")  # 2 threads on a busy machine: a tiny fp32 matmul took 30 ms
def test_measure_matmuls_stops_early_where_bf16_is_emulated(monkeypatch) -> None:
    """The tiny probe decides when bf16 is >10x slower: the large matmul (seconds if emulated) never runs."""
    import torch.nn.functional as F

    shapes = []
    real = F.linear

    def slow_bf16(x, w):
        shapes.append(tuple(x.shape))
        if x.dtype == torch.bfloat16:
            time.sleep(0.02)  # ~1000x a tiny fp32 matmul, far above a loaded machine's fp32 best of 5
        return real(x, w)

    monkeypatch.setattr(hardware.F, "linear", slow_bf16)
    seconds = hardware.measure_matmuls(rows=64, hidden=32, inner=64, repeats=2)
    assert seconds["bfloat16"] > 10 * seconds["float32"]
    assert all(rows == 32 for rows, _ in shapes)  # only the tiny (32-row) probe ran


def test_the_cache_key_names_what_changes_a_measurement(monkeypatch) -> None:
    key = hardware.machine_key(ZEN4)
    assert key["flags"] == ["avx2", "avx512_bf16", "avx512f"] and key["rule"] == hardware.RULE
    assert "threads" not in key  # torchrun ranks (1 thread each) reuse a plain run's decision
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # forces emulated bf16 kernels: must not reuse
    assert hardware.machine_key(ZEN4) != key


def test_measure_matmuls_times_both_dtypes() -> None:
    seconds = hardware.measure_matmuls(rows=8, hidden=32, inner=64, repeats=2)
    assert set(seconds) == {"float32", "bfloat16"} and all(s > 0 for s in seconds.values())


@pytest.fixture
def fresh(monkeypatch, tmp_path: Path):
    """No choice made yet in this process, and a cache folder of the test's own."""
    monkeypatch.setattr(hardware, "_CHOSEN", {})
    monkeypatch.setenv("IMPRAG_CACHE", str(tmp_path / "cache"))


def test_cuda_follows_bf16_support(fresh, monkeypatch) -> None:
    asked = []

    def native(including_emulation=True, answer=True):
        asked.append(including_emulation)
        return answer

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native)
    assert hardware.auto_dtype("cuda") == torch.bfloat16
    assert asked == [False]  # emulated bf16 (pre-Ampere GPUs) does not count
    monkeypatch.setattr(hardware, "_CHOSEN", {})
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert hardware.auto_dtype("cuda:0") == torch.float32


def test_the_choice_is_made_and_logged_once_per_process(fresh, monkeypatch, caplog) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2)
    with caplog.at_level(logging.INFO, logger="imprag.hardware"):
        assert hardware.auto_dtype() == torch.float32
        monkeypatch.setattr(hardware, "cpu_info", lambda: AMX)  # not asked again
        assert resolve_dtype("auto") == torch.float32 and resolve_dtype(None) == torch.float32
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dtype auto -> float32 (no native bf16 on this CPU)"]


def test_from_pretrained_resolves_auto_for_the_cpu_even_beside_a_gpu(fresh, monkeypatch, tiny_dir) -> None:
    """Weights load onto the CPU and every command but train runs there: the CPU's rule, not CUDA's."""
    devices = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "auto_dtype", lambda device="cpu": devices.append(device) or torch.float32)
    ImpRAG.from_pretrained(tiny_dir)
    assert devices == ["cpu"]


def test_explicit_names_and_dtypes_win_and_unknown_names_list_the_choices(fresh, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "auto_choice", lambda device="cpu": pytest.fail("auto was consulted"))
    assert (
        resolve_dtype("bfloat16") == resolve_dtype("bf16") == resolve_dtype(torch.bfloat16) == torch.bfloat16
    )
    assert resolve_dtype("float32") == resolve_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match=r"unknown dtype 'int3'; use one of \['auto', 'bf16', 'bfloat16'"):
        resolve_dtype("int3")


@pytest.fixture
def tiny_dir(tokenizer, tmp_path: Path) -> Path:
    model = ImpRAG(tiny_model("llama"), tokenizer, LayerSplit(1, 3))
    return model.save_pretrained(tmp_path / "tiny")


@pytest.mark.parametrize("fast", [torch.bfloat16, torch.float32])
def test_from_pretrained_defaults_to_the_machines_dtype_and_an_explicit_one_wins(
    tiny_dir: Path, monkeypatch, fast: torch.dtype
) -> None:
    monkeypatch.setattr(hardware, "auto_dtype", lambda device="cpu": fast)
    assert ImpRAG.from_pretrained(tiny_dir).backbone.dtype == fast  # saved in fp32: not the checkpoint's
    assert ImpRAG.from_pretrained(tiny_dir, dtype="auto").backbone.dtype == fast
    other = torch.float32 if fast == torch.bfloat16 else torch.bfloat16
    assert ImpRAG.from_pretrained(tiny_dir, dtype=other).backbone.dtype == other
    with pytest.raises(InputError, match="unknown dtype 'half-ish'"):
        ImpRAG.from_pretrained(tiny_dir, dtype="half-ish")


def test_cli_dtype_choices(tiny_dir: Path, capsys) -> None:
    from imprag.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["info", "--model", str(tiny_dir), "--dtype", "int3"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2
    assert "invalid choice: 'int3'" in error and "auto" in error and "bfloat16" in error


def test_info_shows_the_machine_and_its_auto_dtype(fresh, tiny_dir: Path, capsys) -> None:
    from imprag.cli import main

    assert main(["info", "--machine", "--json"]) == 0
    machine = json.loads(capsys.readouterr().out)
    assert machine["auto_dtype"] in ("float32", "bfloat16") and machine["capability"] and machine["cpu"]
    assert set(machine["flags"]) <= set(hardware.FLAGS) and machine["threads"] >= 1
    assert main(["info", "--machine"]) == 0
    assert f"dtype auto -> {machine['auto_dtype']}" in capsys.readouterr().out
    assert main(["info", "--model", str(tiny_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dtype"] == machine["auto_dtype"] and info["machine"] == machine
