"""A recorder of the ops a computation calls."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class RecordOps(TorchDispatchMode):
    """The aten and custom ops called while active, in order: ``names``, and ``args_of(name)`` the positional
    arguments of each call of one op."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self._args: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        self._args.append(args)
        return func(*args, **(kwargs or {}))

    def args_of(self, name: str) -> list[tuple]:
        return [a for n, a in zip(self.names, self._args) if n == name]
