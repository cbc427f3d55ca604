"""The checks every run makes of its state before it writes a checkpoint: no tensor NaN or infinite."""

from __future__ import annotations

import torch
from torch import nn


def non_finite_state(model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> list[str]:
    """The names of the model's floating-point state tensors (parameters and buffers) and the optimizers' state
    tensors that hold NaN or infinite values, with one host synchronisation for all of them."""
    named = [(f"model {k}", t) for k, t in model.state_dict().items() if t.is_floating_point()]
    for opt_name, opt in optimizers.items():
        for i, st in enumerate(opt.state.values()):
            named += [
                (f"{opt_name} state {i} {k}", t) for k, t in st.items() if torch.is_tensor(t) and t.is_floating_point()
            ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def first_names(names: list[str], k: int = 3) -> str:
    """The first ``k`` of ``names``, and how many more there are, for a message."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")
