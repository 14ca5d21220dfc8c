"""What a benchmark ran on: CPU model and core count, GPU name, torch version. Printed with every result."""

from __future__ import annotations

import os
import platform


def machine_info(device: str | None = None) -> dict:
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    if (device or "").startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def describe(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return f"{info['cpu']} ({info['cores']} cores){gpu}, torch {info.get('torch', '-')}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
