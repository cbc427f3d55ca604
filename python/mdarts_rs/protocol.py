"""The paper's experiments as one resumable job: searches for every (γ, α mode, seed); DARTS' selection of each
(γ, α mode)'s cell by a short training scored on a validation split held out of the training images (Liu et al.
2019, section 3.2); final trainings of the selected cells, or of every search's cell (Li, Chen, Sun 2021, table
1), tested on the test set; and a report rewritten after every finished run (``mdarts_rs.report``).

Every run is an ordinary run folder under the protocol's folder (``search/``, ``select/``, ``final/``), so it can
be inspected, plotted and resumed with the other commands. A finished run is never redone, a stopped one continues
from its checkpoint, a failed one is recorded (``failed.json`` in its folder) and the protocol goes on with the
others. Under torchrun the runs of each stage spread over the ranks (run i on rank i mod N; the folder must be on
a filesystem every rank sees), and the next stage starts when all of the stage's runs are done.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mdarts_rs import report
from mdarts_rs.config import ConfigError, ProtocolConfig, SearchConfig, TrainConfig, resume_conflicts
from mdarts_rs.data import Dataset, has_test_set, load_split, resolve_data
from mdarts_rs.device import resolve_device
from mdarts_rs.distributed import (
    barrier,
    broadcast_object,
    init_distributed,
    launched_world_size,
    leave_distributed,
    rank_loss_said,
    world,
)
from mdarts_rs.evaluate import train
from mdarts_rs.run import RunFolder, RunFolderBusy, atomic_write_text, read_metrics
from mdarts_rs.search import RanksDisagree, SearchDiverged, SearchInterrupted, run_search

#: Settings of a protocol that may differ when it is resumed.
RESUMABLE = {"resume", "quiet", "device", "workers", "data", "tensorboard", "out"}
#: The errors a run may end with while the protocol goes on with the others.
RUN_ERRORS = (SearchDiverged, RanksDisagree, RunFolderBusy, OSError, ValueError, RuntimeError, FloatingPointError)


@dataclass
class Job:
    """One run of a stage: its folder, and what it runs there (a search or a training)."""

    name: str
    folder: Path
    cfg: SearchConfig | TrainConfig


def search_name(mode: str, gamma: float, seed: int) -> str:
    return f"{mode}_gamma{gamma:g}_seed{seed}"


def row_name(mode: str, gamma: float) -> str:
    """A row of the report's table 1: an α mode and a γ."""
    return f"{mode}_gamma{gamma:g}"


def is_finished(folder: Path, epochs: int, search: bool) -> bool:
    """Whether the run in ``folder`` finished all its epochs (a search: its final genotype written too); not where
    its record is damaged."""
    if search and not (folder / "genotype.json").is_file():
        return False
    try:
        return len(read_metrics(folder / "metrics.jsonl")) == epochs
    except ValueError:
        return False


class Protocol:
    """The runs of a protocol and the order they run in (``run``); ``report.build`` reads what they left."""

    def __init__(self, cfg: ProtocolConfig, say: Callable[[str], None] = print):
        self.cfg, self.say = cfg, say
        self.out = cfg.out
        self._images: Dataset | None = None

    # ---- the runs ------------------------------------------------------------------------------------

    def search_config(self, mode: str, gamma: float, seed: int) -> SearchConfig:
        cfg = self.cfg
        return SearchConfig(
            **{**cfg.search_settings(), **self._data()},
            out=self.out / "search" / search_name(mode, gamma, seed),
            alpha_mode=mode,
            gamma=gamma,
            seed=seed,
            device=cfg.device,
            quiet=cfg.quiet,
            tensorboard=cfg.tensorboard,
        )

    def train_config(self, genotype: Path, out: Path, seed: int, selection: bool) -> TrainConfig:
        """A selection training (the preset's recipe for ``select_epochs``, scored on the validation split unless
        ``select_on`` is "test") or a final one (the whole recipe, tested on the test set)."""
        cfg = self.cfg
        settings = cfg.train_settings()
        if selection:
            settings["epochs"] = cfg.selection_epochs()
        holdout = selection and cfg.select_on == "val"
        return TrainConfig(
            **{**settings, **self._data()},
            genotype=str(genotype),
            out=out,
            seed=seed,
            test_on="holdout" if holdout else "test",
            holdout=cfg.holdout,
            device=cfg.device,
            quiet=cfg.quiet,
            tensorboard=cfg.tensorboard,
        )

    def _data(self) -> dict[str, Any]:
        c = self.cfg
        return dict(
            data=c.data,
            dataset=c.dataset,
            label=c.label,
            image_size=c.image_size,
            skip_bad_images=c.skip_bad_images,
            workers=c.workers,
        )

    def searches(self) -> list[Job]:
        return [
            Job(search_name(m, g, s), self.out / "search" / search_name(m, g, s), self.search_config(m, g, s))
            for g in self.cfg.gammas
            for m in self.cfg.alpha_modes
            for s in self.cfg.seeds
        ]

    def selections(self) -> list[Job]:
        """A selection training per finished search (all with the first final seed: one validation split)."""
        seed = self.cfg.final_seeds[0]
        return [
            Job(
                j.name,
                self.out / "select" / j.name,
                self.train_config(j.folder / "genotype.json", self.out / "select" / j.name, seed, True),
            )
            for j in self.searches()
            if is_finished(j.folder, j.cfg.epochs, search=True)
        ]

    def finals(self) -> list[Job]:
        """The final trainings: each row's selected cell with every final seed (``final`` "best"), or every
        finished search's cell with every final seed ("all")."""
        if self.cfg.final == "best":
            sources = [(row, Path(pick)) for row, pick in report.selected(self).items() if pick is not None]
        else:
            sources = [(j.name, j.folder) for j in self.searches() if is_finished(j.folder, j.cfg.epochs, search=True)]
        jobs = []
        for name, search_folder in sources:
            for seed in self.cfg.final_seeds:
                folder = self.out / "final" / name / f"seed{seed}"
                cfg = self.train_config(search_folder / "genotype.json", folder, seed, False)
                jobs.append(Job(f"{name}/seed{seed}", folder, cfg))
        return jobs

    # ---- running them --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every stage in turn, then the report; returns the report's data."""
        self._join()
        stages: list[tuple[str, Callable[[], list[Job]]]] = [("search", self.searches)]
        if self.cfg.final == "best":
            stages.append(("selection", self.selections))
        stages.append(("final", self.finals))
        with rank_loss_said(lambda: f"the runs that finished are kept in {self.out}"):
            for stage, jobs in stages:
                self._run_stage(stage, jobs())
            data = broadcast_object(self.write_report() if world()[0] == 0 else None)  # rank 0 writes the report
            leave_distributed()
        return data

    def _join(self) -> None:
        """Check the settings (and, for a resumed protocol, that they are the recorded ones), then join torchrun's
        process group where there is one."""
        cfg = self.cfg
        if not has_test_set(cfg.dataset, cfg.data):
            raise ConfigError(
                f"{cfg.data}: the protocol needs data with a test set of its own (CIFAR-10/100, a folder with train/ "
                "and val/, arrays with test_images), which no stage but the final one reads"
            )
        try:
            device = resolve_device(cfg.device)
        except ValueError as e:
            raise ConfigError(f"--device: {e}") from None
        if launched_world_size() > 1:
            device = init_distributed(device, timeout=timedelta(days=30))  # ranks wait for the slowest stage
        recorded: tuple[str, Any] = ("ok", None)
        if world()[0] == 0:
            try:
                self._record_settings()
            except Exception as e:  # sent to the other ranks, which would otherwise wait for rank 0
                recorded = ("error", e)
        recorded = broadcast_object(recorded)  # no rank starts a run before the settings are recorded (or refused)
        if recorded[0] == "error":
            raise recorded[1]
        self.cfg = dataclasses.replace(cfg, device=str(device))

    def _record_settings(self) -> None:
        """``protocol.json``: the settings and the command; a resume with other settings is refused."""
        path = self.out / "protocol.json"
        if self.cfg.resume and path.is_file():
            resume_conflicts(recorded_settings(self.out).to_json(), self.cfg.to_json(), RESUMABLE)
        elif self.cfg.resume and (self.out / "report.json").is_file():
            raise FileNotFoundError(
                f"{path}: missing, so the protocol in {self.out} cannot be resumed (its settings are recorded there); "
                "choose another --out"
            )
        elif path.is_file() or (self.out / "report.json").is_file():
            raise FileExistsError(f"{self.out} holds a protocol: pass --resume to continue it, or choose another --out")
        RunFolder(self.out)  # created, and checked writable
        record = {"settings": self.cfg.to_json(), "command": report.command(self.cfg)}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")

    def _run_stage(self, stage: str, jobs: list[Job]) -> None:
        rank, size = world()
        for i, job in enumerate(jobs):
            if i % size == rank:
                self._run_job(stage, job)
                if rank == 0:
                    self.write_report()
        barrier()

    def _run_job(self, stage: str, job: Job) -> None:
        """Run ``job`` unless it finished earlier: continued from its checkpoint where it has one, else afresh; a
        failure is recorded in its folder and the protocol goes on."""
        search = isinstance(job.cfg, SearchConfig)
        try:
            read_metrics(job.folder / "metrics.jsonl")
        except ValueError as e:  # a run cannot continue from a damaged record, nor be counted
            self._failed(stage, job, f"{e}, so the run's record is damaged (remove the run's folder to run it again)")
            return
        if is_finished(job.folder, job.cfg.epochs, search):
            return
        started = (job.folder / "checkpoint.pt").is_file()
        cfg = dataclasses.replace(job.cfg, resume=started, overwrite=not started)
        (job.folder / "failed.json").unlink(missing_ok=True)
        self.say(f"{stage} {job.name}: {'continuing' if started else 'starting'} in {job.folder}")
        try:
            if search:
                run_search(cfg, self._search_images(), world=(0, 1))
            else:
                train(cfg, world=(0, 1))
        except SearchInterrupted:
            raise
        except RUN_ERRORS as e:
            self._failed(stage, job, (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e))
            return
        if not is_finished(job.folder, job.cfg.epochs, search):  # its checkpoint was done, its record was not
            done = len(read_metrics(job.folder / "metrics.jsonl"))
            self._failed(
                stage,
                job,
                f"{job.folder / 'metrics.jsonl'}: holds {done} of the {job.cfg.epochs} epochs its checkpoint "
                "finished, so the run's record is damaged (remove the run's folder to run it again)",
            )

    def _failed(self, stage: str, job: Job, message: str) -> None:
        """Say that ``job`` failed, and record it in its folder (``failed.json``) for the report."""
        self.say(f"{stage} {job.name}: failed: {message}")
        job.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job.folder / "failed.json", json.dumps({"stage": stage, "error": message}) + "\n")

    def _search_images(self) -> Dataset:
        """The training images every search reads, read once."""
        if self._images is None:
            self._images = load_split(self.cfg, quiet=self.cfg.quiet)
        return self._images

    def write_report(self) -> dict[str, Any]:
        data = report.build(self)
        report.write(self.out, data)
        return data


def run_protocol(
    cfg: ProtocolConfig | None = None, say: Callable[[str], None] | None = None, **settings: Any
) -> dict[str, Any]:
    """Run (or with ``resume`` continue) a whole protocol into ``cfg.out``; returns the report's data. Settings may
    be given as a ProtocolConfig or as its fields."""
    if cfg is None:
        cfg = ProtocolConfig(**settings)
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data, False, cfg.dataset))
    return Protocol(cfg, say or (lambda text: print(text, file=sys.stderr))).run()


def recorded_settings(out: Path) -> ProtocolConfig:
    """The settings ``protocol.json`` in ``out`` recorded (``out`` as it is now: a protocol folder may move)."""
    record = out / "protocol.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record}: no protocol here (mdarts-rs protocol writes it)")
    try:
        settings = json.loads(record.read_text())["settings"]
        if not isinstance(settings, dict):
            raise TypeError(f"its settings are a {type(settings).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{record}: not a protocol's settings ({type(e).__name__}: {e})") from None
    return dataclasses.replace(ProtocolConfig.from_json(settings, source=str(record)), out=out)


def rebuild_report(out: Path) -> dict[str, Any]:
    """Rebuild ``report.md`` and ``report.json`` of the protocol in ``out`` from its folders alone."""
    return Protocol(recorded_settings(out)).write_report()
