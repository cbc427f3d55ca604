"""The torch device a run asks for, checked before any work starts."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ValueError naming the
    problem for a name torch does not know or a GPU this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no usable CUDA GPU (use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: mdarts-rs runs on cpu or cuda devices")
    return device
