"""Using a trained network: load it from its checkpoint alone, export it (ONNX, torch.export's .pt2,
TorchScript) with a verified round trip, and classify images."""

from __future__ import annotations

import inspect
import io
import json
import logging
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mdarts_rs._core import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MAX_IMAGE_CHANNELS,
    MAX_SIDE,
    Genotype,
    MultiLevelGenotype,
    decode_images,
    parse_genotype,
)
from mdarts_rs.config import TrainConfig
from mdarts_rs.data import CIFAR10_CLASSES  # re-exported: CIFAR-10's classes in label order
from mdarts_rs.device import resolve_device
from mdarts_rs.evaluate.network import eval_network
from mdarts_rs.memory import check_loadable
from mdarts_rs.run import atomic_write, atomic_write_text, read_checkpoint, write_durably

#: The per-channel mean and std the ImageNet recipe normalises with (torchvision's ImageNet statistics).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Export formats: ONNX (onnxruntime), torch.export's program (.pt2), TorchScript (torch.jit, deprecated by
#: PyTorch but still read by older runtimes).
FORMATS = ("onnx", "pt2", "torchscript")


class ExportError(RuntimeError):
    """An export that could not be written, or whose file does not compute the network's outputs."""


@dataclass
class TrainedNetwork:
    """An evaluation network in eval mode with its weights, and what its inputs need: images of
    ``in_channels`` channels (RGB for 3) and ``image_size``², scaled to [0, 1], then normalised per channel
    with ``mean`` and ``std``."""

    model: nn.Module
    genotype: Genotype | MultiLevelGenotype
    dataset: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    in_channels: int = 3

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a normalised batch (N, 3, H, W)."""
        with torch.no_grad():
            return self.model(x)[0]

    def metadata(self) -> dict[str, Any]:
        """What an exported model's users need besides the model: the input and the classes."""
        return {
            "input": f"float32 (N, {self.in_channels}, H, W), "
            + ("RGB " if self.in_channels == 3 else "")
            + "scaled to [0, 1], then (x - mean) / std per channel",
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "dataset": self.dataset,
            "genotype": json.loads(self.genotype.to_json()),
        }


def trained_network(
    cfg: TrainConfig, genotype: Genotype | MultiLevelGenotype, classes: int, in_channels: int, image_size: int
) -> nn.Module:
    """The evaluation network a training run of ``cfg`` trains (drop path from 0), for ``classes`` classes of
    inputs with ``in_channels`` channels and ``image_size`` pixels (the ImageNet network has its own stem)."""
    return eval_network(
        genotype, cfg.dataset, cfg.init_channels, cfg.layers, cfg.auxiliary, 0.0, classes, in_channels, image_size
    )


def _checked_weights(checkpoint: str | os.PathLike[str], weights: Any) -> int:
    """The number of classes of the network whose ``weights`` a checkpoint holds, after checking them: tensors, the
    floating ones all finite, a 2-D floating classifier. ValueError naming the file and the weight otherwise."""
    if not isinstance(weights, dict):
        raise ValueError(f"{checkpoint}: its 'model' entry is a {type(weights).__name__}, not the network's weights")
    for name, w in weights.items():
        if not isinstance(w, torch.Tensor):
            raise ValueError(f"{checkpoint}: weight {name!r} is a {type(w).__name__}, not a tensor")
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).sum())
            raise ValueError(
                f"{checkpoint}: weight {name!r} holds {bad} NaN or infinite value(s); the checkpoint is damaged or its "
                "training diverged"
            )
    w = weights.get("classifier.weight")
    if w is None:
        raise ValueError(f"{checkpoint}: the checkpoint's weights have no classifier")
    if not w.is_floating_point() or w.ndim != 2 or w.shape[0] < 1:
        raise ValueError(
            f"{checkpoint}: weight 'classifier.weight' is {w.dtype} of shape {tuple(w.shape)}; expected a 2-D "
            "floating-point tensor (classes, features)"
        )
    return int(w.shape[0])


def _checked_inputs(
    checkpoint: str | os.PathLike[str], desc: dict[str, Any]
) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """The channels, image size, mean and std a checkpoint's data description ``desc`` records, each checked
    (integers in range, one finite mean and one std above 0 per channel); ValueError naming the key otherwise."""

    def integer(key: str, top: int) -> int:
        v = desc.get(key)
        if type(v) is not int or not 1 <= v <= top:
            raise ValueError(f"{checkpoint}: its 'dataset.{key}' is {v!r}; expected an integer from 1 to {top}")
        return v

    channels, size = integer("channels", MAX_IMAGE_CHANNELS), integer("image_size", MAX_SIDE)
    stats = []
    for key in ("mean", "std"):
        v = desc.get(key)
        ok = isinstance(v, (list, tuple)) and len(v) == channels
        ok = ok and all(type(x) in (int, float) and math.isfinite(x) and (key == "mean" or x > 0) for x in v)
        if not ok:
            above = " above 0" if key == "std" else ""
            raise ValueError(
                f"{checkpoint}: its 'dataset.{key}' is {v!r}; expected {channels} finite numbers{above}, one per "
                "channel"
            )
        stats.append(tuple(float(x) for x in v))
    return channels, size, stats[0], stats[1]


def load_trained(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedNetwork:
    """The network a ``mdarts-rs train`` run saved in ``checkpoint``, in eval mode, from the checkpoint alone.
    ValueError naming the file for a search checkpoint (not a trained network), one that does not fit, or one
    whose weights or input description are damaged (non-finite weights, a mean or std per channel missing, a std
    of 0), naming the entry; a ``device`` name this machine does not have (``resolve_device``) before any of it."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    state = read_checkpoint(checkpoint, "train")
    cfg = TrainConfig.from_json({**state["config"], "resume": False})
    if not isinstance(state.get("genotype"), str):
        raise ValueError(f"{checkpoint}: the checkpoint holds no genotype of its network")
    genotype = parse_genotype(state["genotype"])
    weights = state["model"]
    classes = _checked_weights(checkpoint, weights)
    desc = state.get("dataset") if isinstance(state.get("dataset"), dict) else None
    if desc is not None:  # written by a version that records the data: its size, channels and statistics
        in_channels, image_size, mean, std = _checked_inputs(checkpoint, desc)
    elif cfg.dataset == "imagenet":
        in_channels, image_size, mean, std = 3, 224, IMAGENET_MEAN, IMAGENET_STD
    else:
        in_channels, image_size, mean, std = 3, 32, tuple(CIFAR10_MEAN), tuple(CIFAR10_STD)
    check_loadable(
        cfg.init_channels, cfg.layers, image_size, classes, weights, str(checkpoint), cfg.dataset == "imagenet"
    )
    model = trained_network(cfg, genotype, classes, in_channels, image_size)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # missing, unexpected or mis-shaped weights
        first = str(e).strip().splitlines()[0][:200]
        raise ValueError(
            f"{checkpoint}: its weights do not fit the network its config and genotype describe ({first})"
        ) from None
    names = state.get("class_names")
    if not isinstance(names, list) or len(names) != classes:
        names = (
            list(CIFAR10_CLASSES)
            if cfg.dataset == "cifar10" and classes == 10
            else [f"class_{i}" for i in range(classes)]
        )
    return TrainedNetwork(
        model=model.to(device).eval(),
        genotype=genotype,
        dataset=cfg.dataset,
        image_size=image_size,
        mean=mean,
        std=std,
        class_names=names,
        in_channels=in_channels,
    )


class _Logits(nn.Module):
    """The evaluation network's class scores alone (its forward also returns the auxiliary head's, None in eval
    mode), for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def export_target(
    out: str | os.PathLike[str], overwrite: bool = False, checkpoint: str | os.PathLike[str] | None = None
) -> Path:
    """The file an export to ``out`` writes (where ``out`` is a symbolic link, the file it points to), checked
    before anything is read: ValueError for an existing target that is not a regular file (a device, a FIFO, a
    folder: an export writes regular files only) or that is ``checkpoint`` itself (the network's own source);
    FileExistsError for an existing one without ``overwrite``. The same for its metadata file (``out`` + ".json")."""
    target = Path(out).resolve()
    for path in (target, Path(f"{out}.json").resolve()):
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise OSError(e.errno, f"cannot export to {path}: {e.strerror}") from None
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise ValueError(f"{path}: is {what}, not a regular file; export writes regular files only")
        if checkpoint is not None and Path(checkpoint).exists() and os.path.samefile(path, checkpoint):
            raise ValueError(f"{path}: is the checkpoint the network is read from; export to another file")
        if not overwrite:
            raise FileExistsError(f"{path}: exists; pass --overwrite to replace it, or choose another --out")
    return target


def export_checkpoint(
    checkpoint: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], overwrite: bool = False
) -> float:
    """``mdarts-rs export``: the trained network of ``checkpoint`` exported to ``out`` (``export``), the target
    checked before the checkpoint is read (``export_target``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    export_target(out, overwrite, checkpoint)
    return export(load_trained(checkpoint), fmt, out, overwrite=True)


def export(
    trained: TrainedNetwork, fmt: str, out: str | os.PathLike[str], atol: float = 1e-4, overwrite: bool = False
) -> float:
    """Write the eval-mode network (no auxiliary head, no drop-path; batch dimension dynamic) to ``out`` in
    ``fmt``, and its metadata (``metadata()``) to ``out`` + ".json". The file is written to a temporary one,
    loaded by its own runtime and must give the network's outputs on random inputs of another batch size within
    ``atol`` before it replaces ``out``; returns the largest difference, ExportError otherwise (nothing written).
    A full disk is an OSError naming the file; ``export_target`` says which targets are refused (an existing one
    without ``overwrite``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = export_target(out, overwrite)
    net = _Logits(trained.model).cpu().eval()
    example = torch.randn(2, trained.in_channels, trained.image_size, trained.image_size)
    diffs: list[float] = []

    def write(tmp: Path) -> None:
        _write_format(net, fmt, example, tmp, Path(out))
        diffs.append(_verify(tmp, fmt, trained, atol, shown=Path(out)))
        atomic_write_text(Path(f"{out}.json").resolve(), json.dumps(trained.metadata(), indent=2) + "\n")

    atomic_write(target, write, passes=(ExportError, ValueError))
    return diffs[0]


def _write_format(net: nn.Module, fmt: str, example: torch.Tensor, path: Path, shown: Path) -> None:
    """The network in ``fmt`` into ``path``, synced (``shown`` names the file in messages). torch's writers write to
    memory and the bytes go to the file through Python: torch.export's own file writer aborts the process (a C++
    exception in a destructor) where a write fails, Python raises an OSError; torch's ONNX writer puts the weights
    in a second file named after the file it writes (the temporary one), which a copy of ``shown`` would lose."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's own deprecation notice
            if fmt == "pt2":
                torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)), buffer)
            elif fmt == "torchscript":
                torch.jit.save(torch.jit.trace(net, example), buffer)
            else:
                buffer.write(_onnx_bytes(net, example, batch, shown))
    except (ExportError, OSError):
        raise
    except Exception as e:  # the exporters raise many types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ExportError(f"cannot export to {fmt}: {type(e).__name__}: {first}") from None
    write_durably(path, lambda f: f.write(buffer.getbuffer()))


#: The most an ONNX file holds: one protobuf message, weights inline (2 GiB). A larger network is refused rather
#: than written with its weights in other files, which a copy of the .onnx file alone would lose.
ONNX_MAX_BYTES = 2**31 - 1


def _onnx_bytes(net: nn.Module, example: torch.Tensor, batch: Any, shown: Path) -> bytes:
    """The network as one self-contained ONNX file's bytes (every weight inline); ExportError naming ``shown`` and
    the size where it is over ``ONNX_MAX_BYTES``, checked on the weights before the export and on the file."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'mdarts-rs[export]'") from None

    def refuse_over(size: int, what: str) -> None:
        if size > ONNX_MAX_BYTES:
            raise ExportError(
                f"{shown}: {what} {size / 2**30:.2f} GiB, more than the {ONNX_MAX_BYTES / 2**30:.0f} GiB an ONNX "
                "file holds (protobuf's limit); export to pt2 or torchscript"
            )

    refuse_over(sum(t.numel() * t.element_size() for t in net.state_dict().values()), "the network's weights take")
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)  # its notes that torchvision's ops (which these networks lack) are skipped
    try:
        if "dynamic_shapes" in inspect.signature(torch.onnx.export).parameters:  # torch 2.5 and newer
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=["images"],
                output_names=["logits"],
                verbose=False,
            )
        else:  # torch 2.4: its dynamo exporter (removed since), every input dimension dynamic
            options = torch.onnx.ExportOptions(dynamic_shapes=True)  # type: ignore[attr-defined]
            program = torch.onnx.dynamo_export(net, example, export_options=options)  # type: ignore[attr-defined]
    finally:
        registry.setLevel(level)
    proto = program.model_proto  # type: ignore[union-attr]  # built in memory, weights inline: no file written
    refuse_over(proto.ByteSize(), "its ONNX file would take")
    return proto.SerializeToString()


def verify_export(path: str | os.PathLike[str], fmt: str, trained: TrainedNetwork, atol: float = 1e-4) -> float:
    """Load ``path`` with its own runtime (onnxruntime, torch.export.load, torch.jit.load) and compare its outputs
    with the network's on random inputs (batch 3); the largest difference, or ExportError naming the file."""
    return _verify(Path(path), fmt, trained, atol, Path(path))


def _verify(path: Path, fmt: str, trained: TrainedNetwork, atol: float, shown: Path) -> float:
    """``verify_export`` of ``path``, named ``shown`` in messages (the file a temporary one becomes)."""
    x = torch.randn(
        3, trained.in_channels, trained.image_size, trained.image_size, generator=torch.Generator().manual_seed(0)
    )
    expected = trained.logits(x.to(next(trained.model.parameters()).device)).cpu()
    try:
        if fmt == "pt2":
            with torch.no_grad():
                # from the file's bytes: torch.export.load reads a path only where it ends in .pt2 (not a temporary)
                got = torch.export.load(io.BytesIO(path.read_bytes())).module()(x)
        elif fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's own deprecation notice
                got = torch.jit.load(str(path))(x)
        elif fmt == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ExportError("verifying an ONNX file needs onnxruntime: pip install 'mdarts-rs[export]'") from None
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        else:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    except (ExportError, ValueError):
        raise
    except Exception as e:  # a damaged file: each runtime raises its own types
        raise ExportError(f"{shown}: cannot be loaded as {fmt} ({type(e).__name__}: {str(e).strip()[:200]})") from None
    if got.shape != expected.shape:
        raise ExportError(f"{shown}: gives outputs of shape {tuple(got.shape)}, the network {tuple(expected.shape)}")
    diff = float((got.float() - expected).abs().max())
    if not diff <= atol:
        raise ExportError(f"{shown}: its outputs differ from the network's by {diff:.3g} (more than {atol:g})")
    return diff


def read_images(paths: list[str | os.PathLike[str]], size: int) -> np.ndarray:
    """Image files as RGB uint8 (N, 3, size, size), decoded exactly as an image folder's cache is (the Rust
    decoder: EXIF orientation applied, 16-bit scaled to 8 bits, shorter side resized to ``size`` with the
    bilinear convolution, centre crop), so that a network sees the pixels it was trained on. ValueError naming
    each file that cannot be read (not an image, truncated, above MAX_PIXELS, not a regular file)."""
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    failed = decode_images([Path(p) for p in paths], out, min(8, os.cpu_count() or 1))
    if failed:
        lines = []
        for i, message in failed:
            name = os.fspath(paths[i])
            why = message[len(name) + 2 :] if message.startswith(f"{name}: ") else message
            lines.append(f"{name}: cannot read it as an image ({why})")
        raise ValueError("\n".join(lines))
    return out


def read_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An image file as RGB uint8 (size, size, 3), decoded as ``read_images`` decodes."""
    return read_images([path], size)[0].transpose(1, 2, 0)


def predict(
    trained: TrainedNetwork, images: list[str | os.PathLike[str]], top: int = 5
) -> list[list[tuple[str, float]]]:
    """The ``top`` classes and their probabilities for each image file, resized and normalised as the network
    was trained."""
    if trained.in_channels != 3:
        raise ValueError(
            f"this network takes {trained.in_channels}-channel images; predict reads RGB image files (use "
            "trained.logits on your own normalised arrays)"
        )
    x = torch.from_numpy(read_images(images, trained.image_size)).float().div_(255.0)
    mean, std = torch.tensor(trained.mean).view(1, -1, 1, 1), torch.tensor(trained.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    probs = torch.softmax(trained.logits(x.to(next(trained.model.parameters()).device)).float().cpu(), dim=1)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [[(trained.class_names[int(i)], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, indices)]
