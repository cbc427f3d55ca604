"""The ``mdarts-rs`` command line: parses options into config dataclasses and calls one function per command."""

from __future__ import annotations

import math
import sys

import click

from mdarts_rs import _core


def _pow10(n: int) -> str:
    return f"10^{math.log10(n):.2f}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_core.__version__, prog_name="mdarts-rs")
def main() -> None:
    """Multi-level differentiable architecture search with heuristic entropy (Li, Chen, Sun 2021)."""


@main.command()
def space() -> None:
    """Print the exact sizes of the DARTS and multi-level search spaces."""
    rows = [
        ("DARTS (shared)", "supernet", _core.search_space_size("shared", derived=False)),
        ("DARTS (shared)", "derived", _core.search_space_size("shared", derived=True)),
        ("multi-level", "supernet", _core.search_space_size("multilevel", derived=False)),
        ("multi-level", "derived", _core.search_space_size("multilevel", derived=True)),
    ]
    click.echo(f"{'space':<16}{'kind':<10}{'about':>10}  exact")
    for name, kind, n in rows:
        click.echo(f"{name:<16}{kind:<10}{_pow10(n):>10}  {n}")
    click.echo(
        f"\nA derived cell: {_core.derived_cell_count()} choices "
        f"(2 of each node's incoming edges, one of {len(_core.PRIMITIVES) - 1} ops per kept edge)."
    )


@main.command()
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.option("--alpha-mode", type=click.Choice(["multilevel", "shared"]), default="multilevel", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True)
def sample(seed: int, alpha_mode: str, fmt: str) -> None:
    """Print a genotype drawn uniformly from the derived space (the random-search baseline)."""
    g = _core.sample_genotype(seed, alpha_mode)
    click.echo(g.to_json() if fmt == "json" else repr(g))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
