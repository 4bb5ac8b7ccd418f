"""Where the networks run: the best device a node has (CUDA, then Apple MPS, then the CPU) or
the one asked for, and the precision its inference and training run in.

Every torch path takes a `Compute`; nothing is written for one device only, so the CPU runs
(and the tests cover) the same code a GPU does, reduced precision included (bf16 autocast
works on the CPU too).
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # torch loads where networks run, not where a launcher reads its options
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", *get_args(Precision))
DEVICES = ("auto", "cpu", "cuda", "mps")  # "cuda:N" names one GPU of several


class DeviceUnavailable(ValueError):
    """A device or precision asked for that this node cannot run."""


class SelfTestFailed(RuntimeError):
    """The device computed something other than the known answer (`shared.learn.selftest`)."""


@dataclass(frozen=True)
class Compute:
    """A device (torch's name: "cpu", "cuda:0", "mps") and the precision networks run in."""

    device: str = "cpu"
    precision: Precision = "fp32"

    @property
    def kind(self) -> str:
        return self.device.partition(":")[0]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The forward passes' precision: fp32 as is, else autocast to bf16/fp16."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.kind, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, which only fp16 training needs (bf16 has fp32's range)."""
        import torch

        return torch.amp.GradScaler(self.kind, enabled=self.precision == "fp16")

    def name(self) -> str:
        """The device's own name: e.g. "NVIDIA H100 80GB HBM3", "Apple MPS", the CPU's model."""
        import torch

        if self.kind == "cuda":
            return str(torch.cuda.get_device_name(self.device))
        if self.kind == "mps":
            return "Apple MPS"
        return _cpu_model()

    def describe(self) -> str:
        """What logs show: e.g. "cuda:0 NVIDIA H100 (bf16)", "cpu (fp32)"."""
        name = f" {self.name()}" if self.kind == "cuda" else ""
        return f"{self.device}{name} ({self.precision})"

    def memory(self) -> tuple[int, int]:
        """(bytes allocated, bytes in all) of the device's own memory; (0, 0) for the CPU, whose
        memory is the process's (`shared.runtime.memory`)."""
        import torch

        if self.kind == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            return int(torch.cuda.memory_allocated(self.device)), int(total)
        if self.kind == "mps":
            return int(torch.mps.current_allocated_memory()), int(
                torch.mps.recommended_max_memory()
            )
        return 0, 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


CPU = Compute()


def choose_compute(device: str = "auto", precision: str = "auto") -> Compute:
    """The `device` asked for ("auto": CUDA, then MPS, then CPU) and its `precision` ("auto":
    bf16 on CUDA where supported, else fp16 there; fp32 elsewhere). Raise DeviceUnavailable
    naming the setting when this node cannot run it."""
    check_names(device, precision)
    chosen = _best_device() if device == "auto" else _available(device)
    chosen_precision = _auto_precision(chosen) if precision == "auto" else precision
    return Compute(str(chosen), chosen_precision)  # type: ignore[arg-type]


def check_names(device: str, precision: str) -> None:
    """Raise DeviceUnavailable for a device or precision no node could run (checked where the
    options are read; whether this node has the device is known only where networks run)."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise DeviceUnavailable(f"--device {device!r}: expected one of {DEVICES} or cuda:N")
    if precision not in PRECISIONS:
        raise DeviceUnavailable(f"--precision {precision!r}: expected one of {PRECISIONS}")


def _best_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _available(name: str) -> torch.device:
    """The named device (a name `check_names` accepts), if this node has it."""
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            raise DeviceUnavailable(f"--device {name!r}: this node has {count} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"--device {name!r}: Apple MPS is not available on this node")
    return device


def _auto_precision(device: torch.device) -> Precision:
    import torch

    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
