"""Command-line options from the Options dataclasses, so that a default is written once.

`add_options(parser, SegmentOptions)` adds an option for each field of the dataclass, named
after it (`max_duration`: `--max-duration`), with the field's default and the help of its
metadata, as transformers' HfArgumentParser does: the stage's code holds what an option means
and its default, next to the code that uses it, and `asr X --help` shows both.

    max_duration: float = field(default=30.0, metadata={"help": "longest segment, seconds"})

The field's type says what the option takes: int, float, str, Path (or X | None of them) one
value; bool is a flag, `--x` where the default is False and `--no-x` where it is True (the
field gets False); tuple[X, ...] one or more values (`--x 1 2`; with `sep` one value split
there: `--temperatures 0,0.4`); list[X] one value a time, repeatable; dict[str, str]
KEY=VALUE, repeatable. Metadata besides "help":

    flag     the option's name where it is not the field's (`--column`, `--no-parity`)
    choices  the values allowed
    metavar  what the help calls the value
    sep      a tuple given as one value, split at `sep` (`--formats json,txt`)
    none     the word that stands for None on the command line (`--language auto`)

`options_from_args(SegmentOptions, args)` builds the dataclass back from the parsed arguments:
each field from the argument of its name (converted back: split at `sep`, `none` to None,
KEY=VALUE pairs to a dict), the field's default where there is none.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def _plain(hint: Any) -> Any:
    """X for `X | None`; any other type as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _hints(cls: type) -> dict[str, Any]:
    return {name: _plain(hint) for name, hint in typing.get_type_hints(cls).items()}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name}: an option needs a default")


def _fields(cls: type, skip: tuple[str, ...], only: tuple[str, ...] | None):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [n for n in (*skip, *(only or ())) if n not in names]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name not in skip and (only is None or f.name in only):
            yield f


def add_options(
    parser: Parser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
) -> None:
    """Add an option to `parser` (or an argument group) for each field of dataclass `cls`, in
    the fields' order: those in `only` if given, else all but those in `skip`."""
    hints = _hints(cls)
    for f in _fields(cls, skip, only):
        meta, hint, default = f.metadata, hints[f.name], _default(f)
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: an option needs metadata 'help'")
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"], "default": default}
        kwargs.update({k: meta[k] for k in ("choices", "metavar") if k in meta})
        name = "--" + f.name.replace("_", "-")
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            name = name if not default else "--no-" + name[2:]
            kwargs["action"] = "store_false" if default else "store_true"
        elif "sep" in meta:  # one value, split by options_from_args
            kwargs["default"] = meta["sep"].join(map(str, default))
        elif origin is tuple:
            kwargs.update(nargs="+", type=args[0])
        elif origin is list:
            kwargs.update(action="append", type=args[0] if args else str)
        elif origin is dict:  # KEY=VALUE strings, paired by options_from_args
            kwargs.update(action="append", default=[f"{k}={v}" for k, v in default.items()])
        elif default is None and "none" in meta:
            kwargs.update(default=meta["none"])
        elif hint in (int, float, Path):
            kwargs["type"] = hint
        elif hint is not str:
            raise TypeError(f"{cls.__name__}.{f.name}: no option for type {hint!r}")
        parser.add_argument(meta.get("flag", name), **kwargs)


def _pair(text: str, metavar: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"expected {metavar}, got '{text}'")
    a, b = text.split("=", 1)
    return a.strip(), b.strip()


def _value(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """A field's value from its parsed argument (a ValueError where it cannot be one)."""
    meta, args = f.metadata, typing.get_args(hint)
    if "sep" in meta:
        parts = [p.strip() for p in value.split(meta["sep"])]
        return tuple(args[0](p) for p in parts if p)
    if typing.get_origin(hint) is dict:
        return dict(_pair(text, meta.get("metavar", "KEY=VALUE")) for text in value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if "none" in meta and value == meta["none"]:
        return None
    return value


def options_from_args(cls: type, args: argparse.Namespace, **given: Any):
    """An instance of dataclass `cls` from parsed arguments: each field from the argument of
    its name where there is one (see add_options), from `given` where named there, else its
    default. ValueError where an argument's value does not fit its field."""
    hints = _hints(cls)
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name not in values and hasattr(args, f.name):
            values[f.name] = _value(f, hints[f.name], getattr(args, f.name))
    return cls(**values)
