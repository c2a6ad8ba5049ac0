"""What this machine computes with: the CPU's vector and matrix features, the threads torch uses, and the GPU.

Encoding speed depends on them more than on anything in cirlab: AVX-512 doubles the fp32 width of AVX2, VNNI adds
int8 dot products, AMX adds int8 and bf16 matrix tiles. :func:`machine` reads them once (Linux: ``/proc/cpuinfo``'s
flags; elsewhere torch's own CPU capability), and every benchmark result records :meth:`Machine.line` in its header.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# (flag in /proc/cpuinfo, the name people use), in order of arrival
FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
            ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"))
# what a precision needs of the CPU to run fast there
NEEDS = {"vnni": ("avx512_vnni", "avx_vnni", "amx_int8"), "bf16": ("avx512_bf16", "amx_bf16"),
         "amx": ("amx_int8", "amx_bf16"), "avx512": ("avx512f",)}


@dataclass(frozen=True)
class Machine:
    """The CPU model, its logical cores, the threads torch runs on, the CPU features of :data:`FEATURES` it has,
    and the GPU torch sees (None: none)."""

    cpu: str
    cores: int
    threads: int
    features: tuple[str, ...]
    gpu: str | None = None

    def has(self, need: str) -> bool:
        """Whether the CPU has ``need``: a flag (``avx2``) or a group of :data:`NEEDS` (``vnni``, ``bf16``, ``amx``)."""
        return any(f in self.features for f in NEEDS.get(need, (need,)))

    def line(self) -> str:
        """One line for a result's header: ``AMD EPYC, 2 cores (torch: 2 threads); AVX2; no AVX-512, VNNI, AMX;
        no GPU``."""
        names = dict(FEATURES)
        have = [names[f] for f, _ in FEATURES if f in self.features]
        lacks = [n for n, group in (("AVX-512", "avx512"), ("VNNI", "vnni"), ("AMX", "amx")) if not self.has(group)]
        return (f"{self.cpu}, {self.cores} cores (torch: {self.threads} threads); {', '.join(have) or 'no AVX2'}"
                f"{'; no ' + ', '.join(lacks) if lacks else ''}; {('GPU ' + self.gpu) if self.gpu else 'no GPU'}")

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "cores": self.cores, "threads": self.threads, "features": list(self.features),
                "gpu": self.gpu}


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The value of the first line of Linux's ``/proc/cpuinfo`` that starts with one of ``keys`` (None: no such line,
    or no such file)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags: Linux's ``/proc/cpuinfo``; elsewhere what torch's CPU capability implies."""
    flags = _cpuinfo(("flags", "Features"))
    if flags is not None:
        return set(flags.split())
    import torch

    capability = torch.backends.cpu.get_cpu_capability().lower()  # "default", "avx2", "avx512", ...
    return {"avx2"} | ({"avx512f"} if "avx512" in capability else set()) if capability != "default" else set()


def cpu_model() -> str:
    return _cpuinfo(("model name",)) or platform.processor() or platform.machine() or "unknown CPU"


@lru_cache(maxsize=1)
def _fixed() -> tuple[str, tuple[str, ...], str | None]:
    import torch

    flags = cpu_flags()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return cpu_model(), tuple(f for f, _ in FEATURES if f in flags), gpu


def machine() -> Machine:
    """This machine: the CPU and GPU read once, the threads torch uses now."""
    import torch

    cpu, features, gpu = _fixed()
    return Machine(cpu, os.cpu_count() or 1, torch.get_num_threads(), features, gpu)
