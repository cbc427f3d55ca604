"""Run folders and the rules every run (search or training) shares: ``config.json``, ``metrics.jsonl``, genotypes
and checkpoints, every file written atomically (a crash, a kill or a full disk never leaves a half-written file,
and finished epochs are never lost); one writer at a time; a folder holding another run refused unless resumed or
overwritten; a resume only with the same settings and the same data."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mdarts_rs._core import Genotype, GenotypeError, MultiLevelGenotype, parse_genotype
from mdarts_rs.config import ConfigError, SearchConfig, TrainConfig, resume_conflicts
from mdarts_rs.data import description_conflicts

#: The files a run writes into its folder; a folder holding any of them is a run's.
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "genotype.json",
    "genotypes",
    "plots",
    "summary.json",
    "summary.md",
    "learning_curves.png",
)
#: The plots a search writes into ``plots/`` (``mdarts_rs.plots``), and the figure of a search in both α modes.
SEARCH_PLOTS = ("skip_connect.png", "alpha.png", "genotype.png")
COMPARE_PLOT = "skip_connect_shared_vs_multilevel.png"
#: The genotype a search derives after each epoch, in ``genotypes/``.
_EPOCH_GENOTYPE = re.compile(r"epoch_\d{3,}\.json")


class RunFolderBusy(RuntimeError):
    """Another process is writing to the run folder."""


class WriteError(OSError):
    """A file that could not be written (``atomic_write``): the message names it and says why."""


def atomic_write(path: Path, write: Callable[[Path], None], passes: tuple[type[BaseException], ...] = ()) -> None:
    """``write(tmp)``, then rename ``tmp`` over ``path``. Where writing fails (a full disk, say), the temporary file
    is removed and ``path`` keeps its previous content; the OSError names the file. Errors of the types ``passes``
    (a check of what was written, say) are raised as they are, the temporary file removed too."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):  # never made where its folder cannot be written (read-only, say)
            tmp.unlink(missing_ok=True)
        # torch's writers report a failed write as a RuntimeError of their own; a WriteError is said already
        if isinstance(e, (*passes, WriteError)) or not isinstance(e, (OSError, RuntimeError)):
            raise
        kept = ""
        with suppress(OSError):  # a folder that cannot be searched: nothing known about its previous version
            kept = "; its previous version is kept" if path.exists() else ""
        code = e.errno if isinstance(e, OSError) else None
        reason = (
            "the disk is full" if code == errno.ENOSPC else (getattr(e, "strerror", None) or str(e).splitlines()[0])
        )
        raise WriteError(code, f"cannot write {path}: {reason}{kept}") from None


def write_durably(tmp: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into ``tmp`` through a Python file object, flushed and synced: a failed write (a full disk)
    raises OSError here, where torch's own file writer would raise a RuntimeError, and the bytes are on the disk
    before the rename makes them the file."""
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, synced, and a rename."""
    atomic_write(path, lambda tmp: write_durably(tmp, lambda f: f.write(text.encode())))


class Checkpoint(dict):
    """A checkpoint's entries (``read_checkpoint``), with the file they were read from, for messages."""

    def __init__(self, entries: dict[str, Any], path: Path):
        super().__init__(entries)
        self.path = path


def checkpoint_name(state: dict[str, Any]) -> str:
    """The file a checkpoint's entries were read from, for messages ("the checkpoint" for entries made in memory)."""
    return str(getattr(state, "path", "the checkpoint"))


#: What each entry of a checkpoint holds, by kind of checkpoint: the entries every use reads, and those a resume
#: reads too (``resume``). Optional entries (written by later versions) are checked where present.
_ENTRIES: dict[str, dict[str, str]] = {
    "search": {"config": "mapping", "model": "weights"},
    "train": {"config": "mapping", "model": "weights", "genotype": "text"},
}
_RESUME_ENTRIES: dict[str, dict[str, str]] = {
    "search": {"epoch": "count", "step": "count", "acc": "mapping", "history": "records", "w_opt": "mapping"}
    | {"a_opt": "mapping", "sched": "mapping"},
    "train": {"epoch": "count", "history": "records", "opt": "mapping", "rng": "tensor"},
}
_OPTIONAL_ENTRIES = {"dataset": "mapping", "class_names": "texts", "test_indices": "counts", "world_size": "count"}
_OPTIONAL_ENTRIES |= {"data": "text"}
_WANT = {
    "mapping": "a mapping",
    "weights": "a mapping of names to tensors",
    "text": "text",
    "count": "a non-negative integer",
    "records": "a list of epoch records (mappings)",
    "tensor": "a tensor",
    "texts": "a list of texts",
    "counts": "a list of non-negative integers",
}


def _holds(want: str, value: Any) -> bool:
    """Whether ``value`` is what an entry of kind ``want`` (``_WANT``) holds."""
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    checks: dict[str, Callable[[Any], bool]] = {
        "mapping": lambda v: isinstance(v, dict),
        "weights": lambda v: (
            isinstance(v, dict) and all(isinstance(k, str) and torch.is_tensor(t) for k, t in v.items())
        ),
        "text": lambda v: isinstance(v, str),
        "count": count,
        "records": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "tensor": torch.is_tensor,
        "texts": lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
        "counts": lambda v: isinstance(v, list) and all(count(i) for i in v),
    }
    return checks[want](value)


def _shown(value: Any, want: str) -> str:
    """What a damaged entry holds, in a few words: its type and value, weights' first item that is no tensor."""
    if isinstance(value, dict) and want == "weights":
        bad = next(k for k, v in value.items() if not (isinstance(k, str) and torch.is_tensor(v)))
        return f"but weight {bad!r} is a {type(value[bad]).__name__}, not a tensor"
    if isinstance(value, dict):
        return "got a mapping"
    if isinstance(value, list):
        return f"got a list of {', '.join(sorted({type(v).__name__ for v in value}))}"
    return f"got {type(value).__name__} {value!r}"[:80]


def _entry_problems(state: dict[str, Any], kind: str, resume: bool) -> list[str]:
    """What is missing or of the wrong type among the entries a use of a checkpoint of ``kind`` reads."""
    wanted = {**_ENTRIES[kind], **(_RESUME_ENTRIES[kind] if resume else {})}
    problems = [f"no {name!r} entry" for name in wanted if name not in state]
    present = {**{k: w for k, w in _OPTIONAL_ENTRIES.items() if state.get(k) is not None}, **wanted}
    for name, want in present.items():
        if name in state and not _holds(want, state[name]):
            problems.append(f"entry {name!r} must be {_WANT[want]}, {_shown(state[name], want)}")
    if resume and not problems and state["epoch"] != len(state["history"]):
        problems.append(f"entry 'epoch' is {state['epoch']} but 'history' holds {len(state['history'])} epochs")
    return problems


def read_checkpoint(path: str | os.PathLike[str], kind: str, resume: bool = False) -> Checkpoint:
    """A checkpoint written by mdarts-rs: ``kind`` "search" (a supernet's, by ``mdarts-rs search``) or "train" (an
    evaluation network's, by ``mdarts-rs train``), with every entry a use of it reads (``resume``: a resume's too)
    of the right type and its settings valid. ValueError naming the file (and the entry) for a damaged file, a
    torch file that is not a checkpoint of this project, or one of the other kind."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the checkpoint file (checkpoint.pt)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign file
        # torch's own text is long and suggests weights_only=False, which does not help a damaged file.
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise ValueError(
            f"{path}: cannot read checkpoint; the file is damaged or was not written by mdarts-rs ({type(e).__name__}: {first})"
        ) from None
    if not isinstance(state, dict) or not {"format", "config", "model"} <= set(state):
        raise ValueError(f"{path}: a torch file, but not a checkpoint written by mdarts-rs")
    found = "search" if "a_opt" in state else "train"  # a search checkpoint holds the α optimizer's state
    if found != kind:
        made_by = {"search": "mdarts-rs search (a supernet)", "train": "mdarts-rs train (an evaluation network)"}
        raise ValueError(f"{path}: a checkpoint of {made_by[found]}; this needs one of {made_by[kind]}")
    problems = _entry_problems(state, kind, resume)
    if problems:
        raise ValueError(f"{path}: a damaged checkpoint: {'; '.join(problems)}")
    settings = SearchConfig if kind == "search" else TrainConfig
    try:
        settings.from_json({**state["config"], "resume": False, "overwrite": False}, source=f"{path} (its 'config')")
    except ConfigError as e:
        raise ValueError(f"{path}: entry 'config' holds settings this version refuses: {e}") from None
    if kind == "train":
        try:
            parse_genotype(state["genotype"])
        except GenotypeError as e:
            raise ValueError(f"{path}: a damaged checkpoint: entry 'genotype' is not a genotype ({e})") from None
    return Checkpoint(state, path)


def load_entries(state: dict[str, Any], loaders: dict[str, Callable[[Any], Any]], into: str) -> None:
    """Load each entry of a checkpoint with its loader (a ``load_state_dict``, say); ValueError naming the file
    and the entry whose content does not fit ``into`` (what the loaders load into: "the supernet of its
    settings")."""
    for name, load in loaders.items():
        try:
            load(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(
                f"{checkpoint_name(state)}: entry {name!r} does not fit {into}; the file is damaged ({first})"
            ) from None


class RunFolder:
    """The files of one search or training run."""

    def __init__(self, path: str | os.PathLike[str], create: bool = True):
        """The run folder at ``path``, created (and checked writable) unless ``create`` is False, as for reading a
        finished run."""
        self.path = Path(path)
        #: while ``--overwrite`` replaces an earlier run: that run's files, and the new run's held back
        self._earlier: list[Path] | None = None
        self._held: dict[Path, str] = {}
        self._say: Callable[[str], None] = _notice
        if str(path) == "":
            raise ValueError("the run folder's path is empty")
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{self.path} is a file, not a run folder")
        if not create:
            if not self.path.is_dir():
                raise FileNotFoundError(errno.ENOENT, f"{self.path}: no such run folder")
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f"cannot create the run folder {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"cannot write to the run folder {self.path}: permission denied")

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def genotype(self) -> Path:
        return self.path / "genotype.json"

    @property
    def genotypes(self) -> Path:
        return self.path / "genotypes"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def run_files(self) -> list[str]:
        """The run files this folder holds."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def written_files(self) -> list[Path]:
        """The files of this folder that a run writes, which ``--overwrite`` replaces: the run files by name, the
        genotypes of ``genotypes/`` (``epoch_NNN.json``) and the plots a search writes; never other files."""
        top = [self.path / n for n in RUN_FILES if (self.path / n).is_file()]
        epochs = [p for p in self.genotypes.glob("epoch_*.json") if _EPOCH_GENOTYPE.fullmatch(p.name) and p.is_file()]
        plots = [self.plots / n for n in (*SEARCH_PLOTS, COMPARE_PLOT) if (self.plots / n).is_file()]
        return top + sorted(epochs) + plots + self.event_files()

    def event_files(self) -> list[Path]:
        """The TensorBoard event files of ``tb/`` (``--tensorboard``)."""
        return sorted(p for p in (self.path / "tb").glob("events.out.tfevents.*") if p.is_file())

    def replace_later(self, say: Callable[[str], None]) -> None:
        """``--overwrite``: the earlier run's files (``written_files``) stay as they are until the new run has
        written its first checkpoint, and the new run's other files are held back until then; a run that stops
        before it (refused, diverged, out of memory) leaves the earlier run as it was."""
        self._earlier, self._held, self._say = self.written_files(), {}, say

    def keep_earlier(self) -> None:
        """The run is over: if it never wrote a checkpoint, the earlier run stays as it was: the files held back
        go, and so do the event files this run wrote beside the earlier run's."""
        if self._earlier is not None:
            for p in set(self.event_files()) - set(self._earlier):
                p.unlink(missing_ok=True)
        self._earlier, self._held = None, {}

    def _replacing(self) -> bool:
        return self._earlier is not None

    def _write_text(self, path: Path, text: str) -> None:
        """Write a run file, or hold it back while an earlier run is still to be replaced."""
        if self._replacing():
            self._held[path] = text
            return
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, text)

    def _replace_earlier(self) -> None:
        """The new run's first checkpoint is written: remove the earlier run's files that the new run did not
        write again, write the files held back, and say in a line what was removed."""
        earlier, held = self._earlier or [], self._held
        self._earlier, self._held = None, {}
        for p in earlier:
            if p != self.checkpoint and p not in held:
                p.unlink(missing_ok=True)
        for folder in {p.parent for p in earlier} - {self.path}:
            with suppress(OSError):  # kept where it holds other files
                folder.rmdir()
        for p, text in held.items():
            self._write_text(p, text)
        if earlier:
            self._say(f"{self.path}: --overwrite removed the earlier run's files ({_describe(earlier, self.path)})")

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the folder's write lock: an OS lock on ``.lock`` (released when the process ends, even by
        kill -9). RunFolderBusy names the process that holds it."""
        lock_path = self.path / ".lock"
        f = open(lock_path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunFolderBusy(
                f"{self.path} is being written by another mdarts-rs process (PID {owner}); "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError:  # a file system without locks, say: no handle left open
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.close()  # closing releases the lock

    def write_json(self, name: str, obj: Any) -> None:
        self._write_text(self.path / name, json.dumps(obj, indent=2) + "\n")

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with one line per finished epoch."""
        self._write_text(self.metrics, "".join(json.dumps(rec) + "\n" for rec in history))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics)

    def write_genotype(self, genotype: Genotype | MultiLevelGenotype, epoch: int | None = None) -> None:
        """The final genotype, or with ``epoch`` the genotype derived after that epoch."""
        path = self.genotype if epoch is None else self.genotypes / f"epoch_{epoch:03d}.json"
        self._write_text(path, genotype.to_json() + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the checkpoint (the first one of a run that replaces an earlier one then removes that run's files)."""
        atomic_write(self.checkpoint, lambda tmp: write_durably(tmp, lambda f: torch.save(state, f)))
        if self._replacing():
            self._replace_earlier()

    def checkpoint_note(self) -> str:
        """Where the last checkpoint is, for messages about a run that stopped."""
        if self._replacing():
            return f"this run wrote no checkpoint; the earlier run in {self.path} is kept as it was"
        if self.checkpoint.exists():
            return f"the last good checkpoint is kept at {self.checkpoint}"
        return f"no checkpoint was written yet in {self.path}"

    def load_checkpoint(self, kind: str = "search") -> Checkpoint:
        """The checkpoint to resume from, with every entry a resume reads."""
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"{self.checkpoint}: no checkpoint to resume from")
        return read_checkpoint(self.checkpoint, kind, resume=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epochs a run finished, as its ``metrics.jsonl`` at ``path`` records them (none without the file);
    ValueError naming the file, and the line where a line is not an epoch's record."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for i, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not an epoch's record (not JSON: {e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {i} is not an epoch's record (a {type(record).__name__})")
        out.append(record)
    return out


def _describe(files: list[Path], root: Path) -> str:
    """Files of a run folder in a few words: their names, a sub-folder's as a count where it holds several."""
    groups: dict[Path, list[Path]] = {}
    for p in files:
        groups.setdefault(p.parent, []).append(p)
    parts = []
    for folder, members in groups.items():
        if folder == root or len(members) <= 2:
            parts += [str(p.relative_to(root)) for p in members]
        else:
            parts.append(f"{folder.relative_to(root)}/ ({len(members)} files)")
    return ", ".join(parts)


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A short text that changes with the images or labels a run reads (their count and a hash of both), so that a
    resumed run is known to read the same data whatever its path."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return f"{len(labels)} images, blake2b {h.hexdigest()}"


@contextmanager
def open_run(
    run: RunFolder, resume: bool, overwrite: bool, kind: str, say: Callable[[str], None] = _notice
) -> Iterator[Checkpoint | None]:
    """Hold ``run``'s write lock for a run of ``kind`` ("search" or "train") and give the checkpoint to continue
    from (``resume``), or None for a new run; a folder that holds another run's files is refused unless
    ``overwrite`` replaces it: its files are removed (and ``say`` says which) only once the new run has written its
    first checkpoint, so that a run refused or stopped before then loses nothing."""
    with run.writer():
        state = run.load_checkpoint(kind) if resume else None
        if state is None and run.run_files():
            if not overwrite:
                raise FileExistsError(
                    f"{run.path} holds another run ({', '.join(run.run_files())}): pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )
            run.replace_later(say)
        try:
            yield state
        finally:
            run.keep_earlier()


def check_same_run(
    state: dict[str, Any],
    cfg: Any,
    may_change: set[str],
    description: dict[str, Any] | None,
    fingerprint: str | None,
    verb: str,
) -> None:
    """ValueError unless a checkpoint's run is the one ``cfg`` describes: the same settings but ``may_change``, the
    same kind of data (``description``, where the data is described) and the same images (``fingerprint``). ``verb``
    says what the run did with its data ("searched", "trained on")."""
    saved = type(cfg).from_json(state["config"], source=f"{checkpoint_name(state)} (its 'config')")
    resume_conflicts(saved.to_json(), cfg.to_json(), may_change)
    if description is not None:
        changed = description_conflicts(state.get("dataset"), description)
        if changed:
            raise ValueError(f"cannot resume with a different dataset ({', '.join(changed)})")
    if state.get("data") != fingerprint:
        raise ValueError(
            f"cannot resume with other data: the run {verb} {state.get('data')}, this data is {fingerprint}"
        )
