"""Numeric precision of the frozen backbone, chosen from what the hardware runs natively.

``precision`` is one of:

* ``"auto"`` (the default everywhere): bf16 autocast where the hardware has native bf16
  arithmetic — a CUDA device that supports bf16, or an x86 CPU whose *active* ATen kernels are
  AVX-512 and that has AVX512-BF16 or AMX-BF16 — and float32 everywhere else;
* ``"fp32"``: always float32;
* ``"bf16"``: always bf16 autocast. On a CPU without native bf16 every bf16 matmul is emulated
  (measured ≈ 40× slower than float32 on an AVX2-only EPYC), so this warns once.

The decision is read from the capability PyTorch reports (``torch.backends.cpu.
get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``) and the CPU's feature flags, never
from a timing, so it is the same on every run of one machine. ``ONEDNN_MAX_CPU_ISA`` below
AVX-512 also rules bf16 out (oneDNN then has no bf16 kernels).
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from typing import Any, Literal, cast

import torch

from promptatlas.configtools import PRECISIONS, ConfigError, Precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast_dtype",
    "check_precision",
    "cpu_info",
    "hardware_info",
    "native_bf16",
    "resolve_precision",
]

_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def check_precision(value: Any) -> Precision:
    """``value`` if it is a valid precision, else a ValueError naming the valid ones."""
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return cast(Precision, value)


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) from /proc/cpuinfo; ("", {}) where there is none."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()  # noqa: SIM115
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_info() -> dict[str, Any]:
    """The CPU as it matters for speed: model, ATen capability, relevant flags, threads."""
    model, flags = _proc_cpuinfo()
    return {
        "model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in _FLAGS if f in flags],
        "threads": torch.get_num_threads(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def _cpu_native_bf16(capability: str, flags: frozenset[str], onednn_isa: str | None) -> bool:
    if not capability.upper().startswith("AVX512"):
        return False
    if (
        onednn_isa is not None
        and "AVX512" not in onednn_isa.upper()
        and "AMX" not in (onednn_isa.upper())
    ):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: the CPU) runs bf16 matmuls natively."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    _, flags = _proc_cpuinfo()
    if not flags:  # no /proc/cpuinfo: ask PyTorch's own cpuinfo
        flags = frozenset(
            name
            for name, probe in (
                ("avx512_bf16", "_is_avx512_bf16_supported"),
                ("amx_bf16", "_is_amx_tile_supported"),
            )
            if getattr(torch.cpu, probe, lambda: False)()
        )
    return _cpu_native_bf16(
        torch.backends.cpu.get_cpu_capability(), flags, os.environ.get("ONEDNN_MAX_CPU_ISA")
    )


_warned: set[str] = set()


def resolve_precision(
    precision: str, device: torch.device | str | None = None
) -> Literal["fp32", "bf16"]:
    """The precision a run actually uses on ``device``: "auto" → bf16 where native, else fp32.

    An explicit "bf16" where bf16 is emulated is honoured but warns once per device type."""
    check_precision(precision)
    native = native_bf16(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        kind = torch.device(device).type if device is not None else "cpu"
        if kind not in _warned:
            _warned.add(kind)
            warnings.warn(
                f"precision 'bf16' on a {kind} without native bf16 "
                f"(CPU capability {torch.backends.cpu.get_cpu_capability()}): bf16 matmuls are "
                "emulated there, typically 4-40x slower than float32. Use precision 'auto' "
                "(or 'fp32').",
                RuntimeWarning,
                stacklevel=2,
            )
    return cast(Literal["fp32", "bf16"], precision)


def autocast_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype | None:
    """The ``PromptedLM`` autocast dtype for a config's precision on ``device`` (None = fp32)."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None


def hardware_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU (and GPU, when one is used) facts saved next to every run's outputs."""
    info: dict[str, Any] = {"cpu": cpu_info()}
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None else None
        info["gpu"] = torch.cuda.get_device_name(index or 0)
    info["native_bf16"] = native_bf16(device)
    return info
