"""``precision="auto"``: the precision mode for a device, decided by what the machine can do.

* CUDA: ``"bf16"`` (bfloat16 autocast, SAM 2's own regime on GPUs).
* A CPU with native bfloat16 products (AMX or AVX-512-BF16, and not capped below them by
  ``ONEDNN_MAX_CPU_ISA``), *confirmed* by a short timed product: ``"bf16"`` when a bfloat16
  matrix product measures at least :data:`BF16_MIN_SPEEDUP` times faster than a float32 one.
* Otherwise float32: ``"fast"`` where the CPU has bfloat16 units and float32 products split
  into bfloat16 parts keep float32 accuracy and measure faster, else ``"fp32"``.
* Other devices (MPS, ...): ``"fp32"``.

The CPU's name and instruction sets come from the operating system (``/proc/cpuinfo``,
``sysctl``) and torch; the product rates are measured once per machine (about 0.2 s) and kept
in a small JSON file in the cache folder (``$NAPARI_SAM2_CACHE/machine/``), keyed by the CPU,
its flags, the thread count, the ISA cap and the torch version, so a changed machine measures
again. :func:`choose_precision` is a pure function of those facts, so tests inject them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fast_fp32 import fast_fp32_available, precision_scope

__all__ = [
    "BF16_MIN_SPEEDUP",
    "SPLIT_MIN_SPEEDUP",
    "CpuInfo",
    "ProductRates",
    "PrecisionChoice",
    "cpu_info",
    "measure_products",
    "product_rates",
    "choose_precision",
    "resolve_precision",
    "machine_record",
    "MachineRecord",
]

log = logging.getLogger(__name__)

BF16_MIN_SPEEDUP = 1.3
"""bfloat16 products must measure this much faster than float32 ones for ``auto`` to pick
``bf16`` on a CPU (below it, the bfloat16 error buys too little)."""
SPLIT_MIN_SPEEDUP = 1.1
"""Split-float32 products must measure this much faster than strict ones for ``fast``."""

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) that still include bfloat16 products.
_BF16_ISA_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_FP16", "AVX10", "ALL")
_AMX_ISA_CAPS = ("AVX512_CORE_AMX", "ALL")


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU offers for matrix products.

    Attributes:
        name: the CPU's model name.
        isa: instruction sets that matter here, best first (``"AMX"``, ``"AVX-512-BF16"``,
            ``"AVX-512"``, ``"AVX2"``, ``"NEON-BF16"``, ``"NEON"``).
        isa_cap: ``ONEDNN_MAX_CPU_ISA`` if set (oneDNN uses nothing above it).
    """

    name: str
    isa: tuple[str, ...]
    isa_cap: str | None = None

    @property
    def bf16_units(self) -> str | None:
        """The bfloat16 product units usable here (``"AMX"``, ``"AVX-512-BF16"``,
        ``"NEON-BF16"``), or ``None``."""
        cap = (self.isa_cap or "ALL").upper()
        if "AMX" in self.isa and cap.startswith(_AMX_ISA_CAPS):
            return "AMX"
        if "AVX-512-BF16" in self.isa and cap.startswith(_BF16_ISA_CAPS):
            return "AVX-512-BF16"
        if "AMX" in self.isa and cap.startswith(_BF16_ISA_CAPS):
            return "AVX-512-BF16"  # AMX CPUs have AVX-512-BF16 as well
        if "NEON-BF16" in self.isa and self.isa_cap is None:
            return "NEON-BF16"
        return None

    def describe(self) -> str:
        """``"AMD EPYC (AVX-512-BF16, AVX-512, AVX2)"``, with the cap if one is set."""
        isa = ", ".join(self.isa) or "no vector extensions found"
        cap = f"; ONEDNN_MAX_CPU_ISA={self.isa_cap}" if self.isa_cap else ""
        return f"{self.name} ({isa}{cap})"


@dataclass(frozen=True)
class ProductRates:
    """Measured matrix-product rates of this machine in GFLOP/s (all threads torch uses)."""

    fp32: float
    bf16: float
    split_fp32: float | None = None
    """float32 products split into bfloat16 parts (``"fast"``), where accurate enough."""


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision mode and why: ``PrecisionChoice("bf16", "this CPU has AMX ...")``."""

    mode: str
    reason: str

    def describe(self) -> str:
        """``"bf16: this CPU has AMX (bfloat16 products 9.4x faster than float32)"``."""
        return f"{self.mode}: {self.reason}"


# ---------------------------------------------------------------------------- the CPU
def _proc_cpuinfo() -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def _sysctl(key: str) -> str:
    try:
        out = subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def isa_from_flags(flags: set[str], machine: str) -> tuple[str, ...]:
    """The instruction sets of :class:`CpuInfo` from the OS's CPU flags."""
    isa: list[str] = []
    if machine.lower() in ("arm64", "aarch64"):
        if "bf16" in flags or "hw.optional.arm.feat_bf16" in flags:
            isa.append("NEON-BF16")
        isa.append("NEON")
        return tuple(isa)
    if "amx_bf16" in flags:
        isa.append("AMX")
    if "avx512_bf16" in flags:
        isa.append("AVX-512-BF16")
    if "avx512f" in flags:
        isa.append("AVX-512")
    if "avx2" in flags:
        isa.append("AVX2")
    return tuple(isa)


_cpu: CpuInfo | None = None


def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (read once per process)."""
    global _cpu
    if _cpu is None:
        machine = platform.machine()
        name, flags = _proc_cpuinfo()
        if platform.system() == "Darwin":
            name = name or _sysctl("machdep.cpu.brand_string")
            if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
                flags.add("hw.optional.arm.feat_bf16")
        isa = isa_from_flags(flags, machine)
        if not flags:  # no flags from the OS (Windows): what torch's kernels were built for
            capability = str(torch.backends.cpu.get_cpu_capability()).upper()
            isa = tuple(
                label for label, token in (("AVX-512", "AVX512"), ("AVX2", "AVX2"))
                if token in capability or (token == "AVX2" and "AVX512" in capability)
            )
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        _cpu = CpuInfo(name or platform.processor() or machine, isa, cap or None)
    return _cpu


# ---------------------------------------------------------------------------- measurements
def _gflops(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def measure_products(size: int = 1024, repeats: int = 3) -> ProductRates:
    """Time ``size``³ float32, bfloat16 and split-float32 products on the CPU (best of
    ``repeats``): about 0.2 s on a laptop."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        fp32 = _gflops(a, b, repeats)
        bf16 = _gflops(a.bfloat16(), b.bfloat16(), repeats)
        split = None
        if fast_fp32_available():
            with precision_scope():
                split = _gflops(a, b, repeats)
    return ProductRates(fp32=fp32, bf16=bf16, split_fp32=split)


class MachineRecord:
    """Measurements of this machine kept in a JSON file (``$NAPARI_SAM2_CACHE/machine/``).

    The file name is a hash of what the measurements depend on (CPU, flags, threads, ISA cap,
    torch version). An unreadable or unwritable cache folder only means measuring again.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self._data = loaded
            except (OSError, ValueError):
                pass

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def update(self, values: dict[str, Any]) -> None:
        """Add ``values`` and rewrite the file atomically (silently skipped if impossible)."""
        self._data.update(values)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as err:
            log.debug("could not keep machine measurements in %s: %s", self.path, err)


_record: MachineRecord | None = None
_record_lock = threading.Lock()


def _machine_key() -> str:
    cpu = cpu_info()
    facts = [cpu.name, ",".join(cpu.isa), cpu.isa_cap or "", torch.__version__,
             str(torch.get_num_threads()), platform.machine()]
    return hashlib.blake2b("|".join(facts).encode(), digest_size=8).hexdigest()


def machine_record() -> MachineRecord:
    """This process's :class:`MachineRecord` (opened at first use)."""
    global _record
    key = _machine_key()
    with _record_lock:
        if _record is None or _record.get("key") != key:
            from .download import cache_dir

            try:
                path: Path | None = cache_dir() / "machine" / f"{key}.json"
            except Exception:  # noqa: BLE001 - no usable cache folder: measure every time
                path = None
            record = MachineRecord(path)
            if record.get("key") != key:
                record._data = {"key": key, "cpu": cpu_info().describe(),
                                "torch": torch.__version__}
            _record = record
        return _record


def product_rates() -> ProductRates:
    """This machine's :class:`ProductRates`, measured once and kept in the machine record."""
    record = machine_record()
    stored = record.get("products")
    if isinstance(stored, dict):
        try:
            return ProductRates(**stored)
        except TypeError:
            pass
    rates = measure_products()
    record.update({"products": dataclasses.asdict(rates)})
    return rates


# ---------------------------------------------------------------------------- the policy
def choose_precision(
    device_type: str, cpu: CpuInfo | None = None, rates: ProductRates | None = None
) -> PrecisionChoice:
    """The mode ``auto`` means on ``device_type`` for a CPU ``cpu`` with product ``rates``."""
    if device_type == "cuda":
        return PrecisionChoice("bf16", "CUDA runs SAM 2 under bfloat16 autocast, as SAM 2 does")
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"bfloat16 is not used on {device_type}")
    if cpu is None or rates is None:
        raise ValueError("choosing a CPU precision needs the CPU's facts and product rates.")
    units = cpu.bf16_units
    speedup = rates.bf16 / max(rates.fp32, 1e-9)
    if units is not None and speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice(
            "bf16", f"this CPU has {units} (bfloat16 products {speedup:.1f}x faster than float32)"
        )
    if units is None:
        why = "this CPU has no bfloat16 units"
        if cpu.isa_cap and any(i in cpu.isa for i in ("AMX", "AVX-512-BF16")):
            why = f"bfloat16 units disabled by ONEDNN_MAX_CPU_ISA={cpu.isa_cap}"
    else:
        why = f"this CPU has {units}, but bfloat16 products measured only {speedup:.1f}x faster"
    split = rates.split_fp32
    if units is not None and split is not None and split >= SPLIT_MIN_SPEEDUP * rates.fp32:
        return PrecisionChoice("fast", f"{why}; float32 split over bfloat16 parts "
                                       f"({split / rates.fp32:.1f}x faster, float32 accuracy)")
    return PrecisionChoice("fp32", f"{why}; float32")


_resolved: dict[str, PrecisionChoice] = {}


def resolve_precision(mode: str, device: torch.device | str) -> PrecisionChoice:
    """``mode`` as run on ``device``: ``"auto"`` decided by :func:`choose_precision` (once per
    process and device type); explicit modes pass through with ``"chosen explicitly"``."""
    if mode != "auto":
        return PrecisionChoice(mode, "chosen explicitly")
    device_type = torch.device(device).type
    choice = _resolved.get(device_type)
    if choice is None:
        if device_type == "cpu":
            choice = choose_precision("cpu", cpu_info(), product_rates())
        else:
            choice = choose_precision(device_type)
        log.info("precision auto on %s -> %s", device_type, choice.describe())
        _resolved[device_type] = choice
    return choice
