"""The command line's options, generated from the config fields (``mdarts_rs.config``): each setting's name, type,
range, choices, default and help come from its field; a --config file and a preset or recipe fill what the command
line did not give."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mdarts_rs.config import MAX_SEED, ConfigError, ProtocolConfig, dump_settings, optional, read_settings

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class FiniteFloat(click.FloatRange):
    """A float option in a range that also refuses NaN and ±inf (click's FloatRange lets NaN through, since every
    comparison with NaN is false)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def click_type(f: dataclasses.Field) -> Any:
    """The click type of a config field: its choices, or its kind with its range."""
    m, ann = f.metadata, str(f.type)
    bounds = dict(min=m["low"], max=m["high"], min_open=m["low_open"], max_open=m["high_open"])
    if m["choices"]:
        return click.Choice(list(m["choices"]))
    if "float" in ann:
        return FiniteFloat(**bounds)
    if "int" in ann:
        return click.IntRange(**bounds)
    return str  # text and paths: the config checks and converts them


def field_option(f: dataclasses.Field, prefix: str = "", preset_default: bool = False) -> Decorator:
    """The option of a config field: named after it (after ``prefix``), with its default, help, type and range.
    ``preset_default``: no default of its own (None: the protocol's preset decides)."""
    m = f.metadata
    dashed = prefix + (m.get("cli") or f.name.replace("_", "-"))
    dest = prefix.replace("-", "_") + f.name
    kind = str(f.type)
    if "bool" in kind:
        decls = [f"--{dashed}/--{prefix}no-{dashed[len(prefix) :]}"] if f.default or preset_default else [f"--{dashed}"]
        default = None if preset_default else f.default
        return click.option(*decls, dest, is_flag=True, default=default, help=m["help"] or None)
    default = None if preset_default else (str(f.default) if isinstance(f.default, Path) else f.default)
    many = kind.startswith("tuple[") and kind.endswith(", ...]")
    return click.option(
        f"--{dashed}",
        dest,
        type=str if many else click_type(f),
        callback=comma_list(ELEMENT[kind], "values", m["choices"]) if many else None,
        nargs=2 if "tuple" in kind and not many else 1,
        default=",".join(map(str, default)) if many and default is not None else default,
        required=m["required"],
        show_default=not optional(f) and not m["required"] and not preset_default,
        metavar="DIR" if f.name == "out" else None,
        help=m["help"] or None,
    )


#: How the command line reads one element of a list setting.
ELEMENT: dict[str, Callable[[str], Any]] = {"tuple[int, ...]": int, "tuple[float, ...]": float, "tuple[str, ...]": str}


def config_options(cls: type, skip: tuple[str, ...] | frozenset[str] = (), prefix: str = "") -> Decorator:
    """Every option of ``cls``'s fields but ``skip``, in field order; with ``prefix``, named ``--<prefix><field>``
    and without defaults of their own (the protocol's preset decides)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for f in reversed(dataclasses.fields(cls)):
            if f.metadata.get("option", True) and f.name not in skip:
                command = field_option(f, prefix, preset_default=bool(prefix))(command)
        return command

    return apply


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (or by an environment variable)."""
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def with_defaults(ctx: click.Context, opts: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with ``defaults`` (a preset, a recipe) in place of every value that was not given explicitly."""
    return {**opts, **{k: v for k, v in defaults.items() if not given(ctx, k)}}


config_file_options = (
    click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Take the settings from this file (JSON, e.g. a run's config.json, or TOML); options given here "
        "override it.",
    ),
    click.option(
        "--print-config",
        is_flag=True,
        help="Print the settings this command would use (defaults, --config and options merged) in the file's "
        "format (JSON without --config) and exit.",
    ),
)


def file_settings(opts: dict[str, Any], cls: type) -> dict[str, Any]:
    """The settings of ``--config`` (popped from ``opts``) as option values: a protocol's search and training
    settings as ``search_<name>``/``train_<name>``."""
    path = opts.pop("config_file")
    if path is None:
        return {}
    settings = read_settings(path, cls)
    for prefix in ("search", "train") if cls is ProtocolConfig else ():
        if prefix not in settings:
            continue
        table = settings.pop(prefix)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{prefix}' must be a mapping of {prefix} settings, got {table!r}")
        settings |= {f"{prefix}_{k}": v for k, v in table.items()}
    return settings


def print_config(cfg: Any, opts: dict[str, Any], file: Path | None) -> bool:
    """With ``--print-config``, print ``cfg`` in the format of ``file`` (JSON without one); whether it printed."""
    if not opts.pop("print_config"):
        return False
    click.echo(dump_settings(cfg, "toml" if file is not None and file.suffix == ".toml" else "json"), nl=False)
    return True


def comma_list(
    convert: Callable[[str], Any], what: str, choices: tuple[str, ...] | None = None
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback parsing a comma-separated list of ``what`` (finite numbers; seeds from 0 to MAX_SEED)."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> list[Any] | None:
        if value is None or isinstance(value, (list, tuple)):
            return None if value is None else list(value)
        if any(not v.strip() for v in value.split(",")):
            got = "nothing" if not value.strip() else f"{value!r}, which has an empty item"
            raise click.BadParameter(f"expected comma-separated {what}, got {got}")
        try:
            out = [convert(v.strip()) for v in value.split(",")]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}") from None
        if convert is float and not all(math.isfinite(v) for v in out):
            raise click.BadParameter(f"expected finite numbers, got {value!r}")
        if convert is int and (not out or min(out) < 0 or max(out) > MAX_SEED):
            raise click.BadParameter(f"expected integers from 0 to {MAX_SEED}")
        if choices and any(v not in choices for v in out):
            raise click.BadParameter(f"expected comma-separated values of {', '.join(choices)}, got {value!r}")
        return out

    return parse


def combined(*decorators: Decorator) -> Decorator:
    """Several option decorators as one, the first outermost."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(decorators):
            command = option(command)
        return command

    return apply


def prefixed(opts: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The options given for the runs of a protocol (``--search-*``, ``--train-*``), as settings."""
    out = {}
    for key in [k for k in opts if k.startswith(prefix)]:
        value = opts.pop(key)
        if value is not None:
            out[key[len(prefix) :]] = tuple(value) if isinstance(value, list) else value
    return out
