"""A search step replayed as one CUDA graph (``--cuda-graph``): the step's tens of thousands of kernel launches
become one launch, which is what holds a small supernet's step back on a GPU."""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CapturedStep:
    """``step`` (``search_step`` with its parts bound) replayed from a CUDA graph.

    The first ``warmup`` calls run eagerly on a side stream, as graph capture wants (cuDNN's autotuner and the
    optimizers' lazily made state run outside the graph); the next call captures the step and replays it, and
    later calls copy their batch into the captured inputs and replay. A graph freezes the Python numbers the step
    reads, among them the weights' learning rate, so ``recapture()`` (after the scheduler's step, once an epoch)
    asks for a new capture at the next call. Where capture fails, the steps run eagerly from then on, with a
    message through ``say``.

    A call returns the step's statistics on the device; a replay's are the graph's output tensor, which the next
    replay overwrites: use them (or enqueue work that reads them) before the next call."""

    def __init__(self, step: Step, warmup: int = 3, say: Callable[[str], None] = print):
        self.step, self.say = step, say
        self.warmup_left = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self._stale = True
        self._inputs: list[torch.Tensor] = []
        self._output: torch.Tensor | None = None

    def recapture(self) -> None:
        """Capture again before the next replay (the numbers the graph froze have changed)."""
        self._stale = True

    def __call__(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.step(xt, yt, xv, yv)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = self.step(xt, yt, xv, yv)
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self._stale and not self._capture(xt, yt, xv, yv):
            return self.step(xt, yt, xv, yv)
        for dst, src in zip(self._inputs, (xt, yt, xv, yv)):
            dst.copy_(src, non_blocking=True)
        assert self.graph is not None and self._output is not None, "replay before capture"
        self.graph.replay()
        return self._output

    def _capture(self, *batch: torch.Tensor) -> bool:
        """Capture the step on copies of ``batch`` (the inputs every replay reads); False where it failed."""
        try:
            if not self._inputs:
                self._inputs = [t.clone() for t in batch]
            torch.cuda.synchronize()
            if self.graph is not None:
                self.graph.reset()  # releases the old graph's memory before the new one takes its own
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._output = self.step(*self._inputs)
            self._stale = False
            return True
        except Exception as e:  # anything that cannot be captured
            self.failed, self.graph = True, None
            self.say(f"CUDA graph capture failed ({type(e).__name__}: {e}); continuing eagerly")
            return False
