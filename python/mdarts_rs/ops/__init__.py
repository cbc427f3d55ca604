"""Fused mixed-op kernels as PyTorch custom ops (namespace ``mdarts``).

- ``weighted_sum(xs, w)``: Σ_k w[k]·xs[k] without stacking the inputs, with a fused backward.
- ``softmax_entropy(alpha)``: row softmax p and row entropy h = −Σ p·ln p, with a fused backward.

The plain-torch references in ``_ref`` are the specification. The C++ (CPU) and CUDA kernels in the
project's ``cuda/`` folder are embedded in ``mdarts_rs._core`` and built with torch.utils.cpp_extension on
first use, into ``$MDARTS_CACHE/torch_extensions`` (about a minute per build; reused afterwards).

``MDARTS_OPS`` picks the implementation: ``auto`` (default) uses the compiled ops for CUDA tensors and the
references on the CPU; ``ext`` uses the compiled ops everywhere and fails loudly if they cannot be built;
``ref`` never builds them. When ``auto`` cannot build them, one warning says why and the references are used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from mdarts_rs._core import kernel_sources
from mdarts_rs.data import default_cache_dir
from mdarts_rs.ops import build
from mdarts_rs.ops._ref import softmax_entropy_ref, weighted_sum_ref

__all__ = [
    "build_kernels",
    "extension_loaded",
    "load_extension",
    "softmax_entropy",
    "softmax_entropy_ref",
    "weighted_sum",
    "weighted_sum_ref",
]

_state: dict[str, object] = {"loaded": None, "cuda": False, "error": None}


def _mode() -> str:
    mode = os.environ.get("MDARTS_OPS", "auto")
    if mode not in ("auto", "ext", "ref"):
        raise ValueError(f"MDARTS_OPS must be 'auto', 'ext' or 'ref', got {mode!r}")
    return mode


def _build_dir(sources: list[tuple[str, str]], with_cuda: bool) -> Path:
    h = hashlib.sha256()
    for name, text in sources:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    h.update(f"{torch.__version__}|{torch.version.cuda}|{with_cuda}".encode())
    d = default_cache_dir() / "torch_extensions" / h.hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_extension(with_cuda: bool | None = None, verbose: bool = False) -> None:
    """Build (first time) and load the compiled ops, then register their autograd and fake kernels.

    ``with_cuda`` defaults to whether CUDA is available; the CUDA compiler is the system's (``CUDA_HOME``) or the
    one ``mdarts-rs build-kernels`` installed into the cache. Raises on failure (compiler missing, ...).
    """
    if _state["loaded"]:
        return
    from torch.utils import cpp_extension  # heavy (it loads setuptools): only when building

    if with_cuda is None:
        with_cuda = torch.cuda.is_available()
    if with_cuda and cpp_extension.CUDA_HOME is None:
        # no system toolkit: the compiler wheels that `mdarts-rs build-kernels` installed, if it ran
        home = build.cached_cuda_home()
        if home is None:
            raise RuntimeError("CUDA_HOME is not set and no nvcc of torch's CUDA version was found")
        build.use_cuda_home(home)
    sources = kernel_sources()
    folder = _build_dir(sources, with_cuda)
    src = folder / "src"
    src.mkdir(exist_ok=True)
    paths = []
    for name, text in sources:
        p = src / name
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        if name.endswith(".cpp") or (with_cuda and name.endswith(".cu")):
            paths.append(str(p))
    cpp_extension.load(
        name="mdarts_ops_cuda" if with_cuda else "mdarts_ops_cpu",
        sources=paths,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=verbose,
    )
    _register_python_parts()
    _state["loaded"], _state["cuda"] = True, with_cuda


def build_kernels(arch: str | None = None, verbose: bool = False) -> Path:
    """Find or install an nvcc of torch's CUDA version, then build and load the CPU and CUDA kernels (cached for
    later runs). Returns the CUDA home used."""
    version = build.torch_cuda_version()
    home = build.system_cuda_home(version) or build.wheel_cuda_home(version, default_cache_dir())
    build.use_cuda_home(home, arch)
    load_extension(with_cuda=True, verbose=verbose)
    return home


def _build_failure(e: BaseException) -> str:
    """One line: why the kernels could not be built, and what runs instead."""
    text = str(e).strip()
    if "CUDA_HOME" in text or "nvcc" in text:
        why = "no CUDA compiler of torch's CUDA version was found"
    elif "Ninja is required" in text:
        why = "ninja is missing (pip install ninja)"
    else:
        # a compiler's first "error:" line says most; else the first line of the exception
        lines = [ln.strip() for ln in text.splitlines() if "error:" in ln] or text.splitlines() or [""]
        why = f"{type(e).__name__}: {lines[0][:160]}"
    return (
        f"could not build the fused kernels ({why}); running the plain-torch references instead, which compute "
        "the same values more slowly (`mdarts-rs build-kernels` builds them and says what fails; "
        "MDARTS_OPS=ref silences this)"
    )


def extension_loaded() -> bool:
    """Whether the compiled ops are loaded."""
    return bool(_state["loaded"])


def _use_extension(t: torch.Tensor) -> bool:
    mode = _mode()
    if mode == "ref":
        return False
    if mode == "auto" and t.device.type != "cuda":
        return False
    if _state["loaded"] is None:
        try:
            load_extension()
        except Exception as e:  # compiler or nvcc missing, build failure
            if mode == "ext":
                raise
            _state["loaded"], _state["error"] = False, e
            warnings.warn(f"mdarts_rs.ops: {_build_failure(e)}", RuntimeWarning, stacklevel=3)
    if not _state["loaded"]:
        return False
    return t.device.type == "cpu" or (t.device.type == "cuda" and bool(_state["cuda"]))


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[k]·xs[k] over K same-shaped tensors (the DARTS mixed op)."""
    if _use_extension(w):
        return torch.ops.mdarts.weighted_sum(list(xs), w)
    return weighted_sum_ref(list(xs), w)


def softmax_entropy(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax p and row entropy h of α (E, K)."""
    if _use_extension(alpha):
        p, h = torch.ops.mdarts.softmax_entropy(alpha)
        return p, h
    return softmax_entropy_ref(alpha)


def _register_python_parts() -> None:
    """Autograd formulas and fake (meta) kernels of the compiled ops, for autograd and torch.compile."""
    lib = torch.library

    @lib.register_fake("mdarts::weighted_sum")
    def _ws_fake(xs, w):
        return torch.empty_like(xs[0])

    @lib.register_fake("mdarts::weighted_sum_backward")
    def _ws_bwd_fake(grad, xs, w, need_xs, need_w):
        gxs = [torch.empty_like(grad) for _ in xs] if need_xs else []
        return gxs, (torch.empty_like(w) if need_w else w.new_empty(0))

    @lib.register_fake("mdarts::softmax_entropy")
    def _se_fake(alpha):
        return torch.empty_like(alpha, memory_format=torch.contiguous_format), alpha.new_empty(alpha.shape[0])

    @lib.register_fake("mdarts::softmax_entropy_backward")
    def _se_bwd_fake(grad_p, grad_h, alpha):
        return torch.empty_like(alpha, memory_format=torch.contiguous_format)

    def _ws_setup(ctx, inputs, output):
        xs, w = inputs
        ctx.need_xs = any(x.requires_grad for x in xs)
        ctx.need_w = w.requires_grad
        ctx.k = len(xs)
        ctx.save_for_backward(w, *(xs if ctx.need_w else ()))

    def _ws_backward(ctx, grad):
        w, *xs = ctx.saved_tensors
        if not xs:
            xs = [grad] * ctx.k  # not read when grad_w is not needed; only shapes and dtypes are checked
        gxs, gw = torch.ops.mdarts.weighted_sum_backward(grad, xs, w, ctx.need_xs, ctx.need_w)
        return (list(gxs) if ctx.need_xs else [None] * ctx.k), (gw if ctx.need_w else None)

    lib.register_autograd("mdarts::weighted_sum", _ws_backward, setup_context=_ws_setup)

    def _se_setup(ctx, inputs, output):
        (alpha,) = inputs
        ctx.save_for_backward(alpha)

    def _se_backward(ctx, grad_p, grad_h):
        (alpha,) = ctx.saved_tensors
        if grad_p is None:
            grad_p = torch.zeros_like(alpha)
        if grad_h is None:
            grad_h = alpha.new_zeros(alpha.shape[0])
        return torch.ops.mdarts.softmax_entropy_backward(grad_p, grad_h, alpha)

    lib.register_autograd("mdarts::softmax_entropy", _se_backward, setup_context=_se_setup)
