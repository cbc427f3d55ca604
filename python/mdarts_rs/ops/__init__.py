"""Fused mixed-op kernels as PyTorch custom ops (namespace ``mdarts``).

- ``weighted_sum(xs, w)``: Σ_k w[k]·xs[k] without stacking the inputs, with a fused backward.
- ``softmax_entropy(alpha)``: row softmax p and row entropy h = −Σ p·ln p, with a fused backward.
- ``node_mix(xs, w)``: the mixed sums of all edges that read one node (the batched cell), each op output
  either per edge or shared by every edge, with a fused backward.
- ``bn_mix(xs, shared, w, eps)``: the mixed outputs of a batched node with its per-edge ops' last
  (non-affine, training-mode) batch norms in the same op; returns the batch statistics for the running ones.
- ``depthwise_conv(x, w, stride, padding, dilation, edge_major)``: a depthwise convolution with channel
  multiplier (torch's conv2d with groups = channels, or its outputs in edge-major order), each plane read once
  per pass, the weight gradient deterministic.

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

from mdarts_rs.ops._ref import bn_mix_ref, depthwise_conv_ref, node_mix_ref, softmax_entropy_ref, weighted_sum_ref

__all__ = [
    "bn_mix",
    "bn_mix_ref",
    "depthwise_conv",
    "depthwise_conv_ref",
    "extension_loaded",
    "load_extension",
    "node_mix",
    "node_mix_ref",
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
    from mdarts_rs.data import default_cache_dir

    h = hashlib.sha256()
    for name, text in sources:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    h.update(f"{torch.__version__}|{torch.version.cuda}|{with_cuda}".encode())
    d = default_cache_dir() / "torch_extensions" / h.hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_extension(with_cuda: bool | None = None, verbose: bool = False) -> None:
    """Build (first time) and load the compiled ops, then register their autograd and fake kernels.

    ``with_cuda`` defaults to whether CUDA is available. Raises on failure (compiler missing, ...).
    """
    if _state["loaded"]:
        return
    from torch.utils import cpp_extension

    from mdarts_rs._core import kernel_sources

    if with_cuda is None:
        with_cuda = torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    sources = kernel_sources()
    build = _build_dir(sources, with_cuda)
    src = build / "src"
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
        build_directory=str(build),
        is_python_module=False,
        verbose=verbose,
    )
    _register_python_parts()
    _state["loaded"], _state["cuda"] = True, with_cuda


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
            warnings.warn(
                f"mdarts_rs.ops: could not build the fused kernels ({type(e).__name__}: {e}); "
                "using the plain-torch references (set MDARTS_OPS=ref to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
    if not _state["loaded"]:
        return False
    return t.device.type == "cpu" or (t.device.type == "cuda" and bool(_state["cuda"]))


def weighted_sum(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Σ_k w[k]·xs[k] over K same-shaped tensors (the DARTS mixed op)."""
    if _use_extension(w):
        return torch.ops.mdarts.weighted_sum(list(xs), w)
    return weighted_sum_ref(list(xs), w)


def node_mix(xs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """out[b, e, r] = Σ_k w[e, k]·xs[k][b, e or 0, r]: xs[k] is (B, n, R) or shared (B, 1, R), w is (n, K)."""
    if _use_extension(w):
        return torch.ops.mdarts.node_mix(list(xs), w)
    return node_mix_ref(list(xs), w)


def bn_mix(
    xs: Sequence[torch.Tensor], shared: Sequence[torch.Tensor], w: torch.Tensor, eps: float, relu: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out[b, e·C+c] = Σ_s w[e, s]·shared[s][b, g·C+c] + Σ_k w[e, S+k]·BN(xs[k])[b, e·C+c] (batch statistics)
    for shared (B, G·C, H, W), xs[k] (B, n·C, H, W) and w (n, S + K), edge e reading group g = e // (n/G) of the
    shared inputs (G = 1: one for all edges), then max(out, 0) if ``relu``; returns (out, mean, biased
    variance), the statistics (K, n·C) without gradient."""
    if _use_extension(w):
        out, mean, var = torch.ops.mdarts.bn_mix(list(xs), list(shared), w, eps, relu)
        return out, mean, var
    return bn_mix_ref(list(xs), list(shared), w, eps, relu)


def depthwise_conv(
    x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, dilation: int, edge_major: bool = False
) -> torch.Tensor:
    """out[b, o] = conv(x[b, c], w[o]) for x (B, C, H, W) and w (C·m, 1, K, K), no bias, the same stride, padding
    and dilation on both axes; output channel o is copy e of input channel c at o = c·m + e (torch's conv2d with
    groups = C) or, with ``edge_major``, at o = e·C + c (the m copies one after the other). The compiled kernels
    exist for K = 3 and 5 (the search space's) and float32, float64 and bfloat16 inputs; others run the reference."""
    if w.shape[-1] in (3, 5) and x.dtype != torch.float16 and _use_extension(w):
        return torch.ops.mdarts.depthwise_conv(x, w, stride, padding, dilation, edge_major)
    return depthwise_conv_ref(x, w, stride, padding, dilation, edge_major)


def softmax_entropy(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax p and row entropy h of α (E, K)."""
    if _use_extension(alpha):
        p, h = torch.ops.mdarts.softmax_entropy(alpha)
        return p, h
    return softmax_entropy_ref(alpha)


def _placeholders(grad: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    """Inputs a backward kernel reads only for their shapes: one uninitialised element, expanded to each shape
    (no memory, no kernel)."""
    one = grad.new_empty(())
    return [one.expand(shape) for shape in shapes]


def _engine_wants(t: torch.Tensor) -> bool:
    """Whether the backward pass that is running will use a gradient for ``t``: not when ``t`` needs none, nor when
    ``torch.autograd.grad`` asks for inputs that do not depend on it (a first-order α step asks for α alone, and
    the network's weights then need no gradient). A custom op's ``ctx.needs_input_grad`` only says whether an
    input requires grad; torch's own convolutions skip such gradients this way. True when the engine cannot
    say (outside a backward pass, or a torch without this query)."""
    if not t.requires_grad:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node))
    except (AttributeError, RuntimeError):
        return True


def _wanted(grads: list[torch.Tensor], needed: list[bool]) -> list[torch.Tensor | None]:
    """A backward kernel's input gradients, None where an input needs none (all of them when the kernel
    returned an empty list because none did)."""
    return [g if need else None for g, need in zip(grads, needed)] if any(needed) else [None] * len(needed)


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

    @lib.register_fake("mdarts::node_mix")
    def _nm_fake(xs, w):
        return xs[0].new_empty((xs[0].shape[0], w.shape[0], xs[0].shape[2]))

    @lib.register_fake("mdarts::node_mix_backward")
    def _nm_bwd_fake(grad, xs, w, need_xs, need_w):
        gxs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs] if need_xs else []
        return gxs, (torch.empty_like(w) if need_w else w.new_empty(0))

    @lib.register_fake("mdarts::bn_mix")
    def _bm_fake(xs, shared, w, eps, relu):
        stat = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
        stats = xs[0].new_empty((len(xs), xs[0].shape[1]), dtype=stat)
        return torch.empty_like(xs[0], memory_format=torch.contiguous_format), stats, torch.empty_like(stats)

    @lib.register_fake("mdarts::bn_mix_backward")
    def _bm_bwd_fake(grad, xs, shared, w, mean, var, eps, relu, need_xs, need_shared, need_w):
        gxs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs] if need_xs else []
        gsh = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in shared] if need_shared else []
        return gxs, gsh, (torch.empty_like(w, memory_format=torch.contiguous_format) if need_w else w.new_empty(0))

    @lib.register_fake("mdarts::depthwise_conv")
    def _dw_fake(x, w, stride, padding, dilation, edge_major):
        span = dilation * (w.shape[2] - 1) + 1
        ho, wo = ((n + 2 * padding - span) // stride + 1 for n in x.shape[2:])
        return x.new_empty((x.shape[0], w.shape[0], ho, wo))

    @lib.register_fake("mdarts::depthwise_conv_backward")
    def _dw_bwd_fake(grad, x, w, stride, padding, dilation, edge_major, need_x, need_w):
        gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0)
        return gx, (torch.empty_like(w, memory_format=torch.contiguous_format) if need_w else w.new_empty(0))

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

    def _nm_setup(ctx, inputs, output):
        xs, w = inputs
        ctx.need_xs = [x.requires_grad for x in xs]
        ctx.need_w = w.requires_grad
        ctx.shapes = [x.shape for x in xs]
        ctx.save_for_backward(w, *(xs if ctx.need_w else ()))

    def _nm_backward(ctx, grad):
        w, *xs = ctx.saved_tensors
        if not xs:  # only shapes are read when grad_w is not needed
            xs = _placeholders(grad, ctx.shapes)
        gxs, gw = torch.ops.mdarts.node_mix_backward(grad, xs, w, any(ctx.need_xs), ctx.need_w)
        return _wanted(gxs, ctx.need_xs), (gw if ctx.need_w else None)

    lib.register_autograd("mdarts::node_mix", _nm_backward, setup_context=_nm_setup)

    def _bm_setup(ctx, inputs, output):
        xs, shared, w, eps, relu = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics (two kernels each call)
        ctx.need_xs = [x.requires_grad for x in xs]
        ctx.need_shared = [t.requires_grad for t in shared]
        ctx.need_w = w.requires_grad
        ctx.eps, ctx.relu, ctx.n_xs = eps, relu, len(xs)
        ctx.shared_shapes = [t.shape for t in shared]
        ctx.keep_shared = ctx.need_w or ctx.relu  # read for the weights' gradients and the ReLU's mask
        ctx.save_for_backward(w, mean, var, *xs, *(shared if ctx.keep_shared else ()))

    def _bm_backward(ctx, grad, _grad_mean, _grad_var):
        if grad is None:  # only the statistics were used
            return [None] * len(ctx.need_xs), [None] * len(ctx.need_shared), None, None, None
        w, mean, var, *rest = ctx.saved_tensors
        xs, shared = rest[: ctx.n_xs], rest[ctx.n_xs :]
        if not ctx.keep_shared:  # the shared inputs are not read
            shared = _placeholders(grad, ctx.shared_shapes)
        gxs, gsh, gw = torch.ops.mdarts.bn_mix_backward(grad, xs, shared, w, mean, var, ctx.eps, ctx.relu, any(ctx.need_xs),
                                                        any(ctx.need_shared), ctx.need_w)
        return _wanted(gxs, ctx.need_xs), _wanted(gsh, ctx.need_shared), (gw if ctx.need_w else None), None, None

    lib.register_autograd("mdarts::bn_mix", _bm_backward, setup_context=_bm_setup)

    def _dw_setup(ctx, inputs, output):
        x, w, ctx.stride, ctx.padding, ctx.dilation, ctx.edge_major = inputs
        ctx.need_x, ctx.need_w = x.requires_grad, w.requires_grad
        ctx.save_for_backward(x, w)

    def _dw_backward(ctx, grad):
        x, w = ctx.saved_tensors
        # the weight gradient is the costliest part, and an α step's backward does not want it
        need_x, need_w = ctx.need_x and _engine_wants(x), ctx.need_w and _engine_wants(w)
        gx, gw = torch.ops.mdarts.depthwise_conv_backward(grad, x, w, ctx.stride, ctx.padding, ctx.dilation,
                                                          ctx.edge_major, need_x, need_w)
        return (gx if need_x else None), (gw if need_w else None), None, None, None, None

    lib.register_autograd("mdarts::depthwise_conv", _dw_backward, setup_context=_dw_setup)

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
