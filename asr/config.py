"""Reading the project's YAML configuration files (rights policy, alignment rules, recipes,
benchmark configurations) and checking them against their dataclasses.

`from_dict(cls, doc, source)` is the schema check: a dataclass's fields and type hints are the
schema, so a new option is checked the moment it is declared. Every problem is a ConfigError
whose message is one line naming the file (or option), the key and what was expected:

    recipe.yaml: optim.max_steps: expected integer, got 'many'
    bench.yaml: gate: unknown key 'max_wer_increse' (did you mean 'max_wer_increase'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or option that cannot be read or does not fit its schema; the message
    (one line) names the file or option, the key and what was expected. `source` and `key` (the
    dotted path of the offending key, e.g. optim.lr or gate.max_wer_increse) when known."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        super().__init__(message)
        self.source, self.key = source, key


def _error(source: str, path: str, problem: str, key: str | None = None) -> ConfigError:
    """ConfigError `source: path: problem` about `key` (default: path)."""
    return ConfigError(f"{_at(source, path)}: {problem}", source, key or path)


class Invalid(Exception):
    """Raised by a field's own parser (field metadata "parse") with what is wrong with a value;
    from_dict adds the file and the key."""


def yaml_error(source: str, e: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error as one line: where (line, column) and what the parser expected."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = "; ".join(
        " ".join(str(x).split())
        for x in (getattr(e, "context", None), getattr(e, "problem", None))
        if x
    ) or " ".join(str(e).split())
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"{source}: not valid YAML{at}: {what}")


def load_yaml(path: str | os.PathLike | None, default: str) -> tuple[dict, str]:
    """(document, source) of a YAML file, or of the packaged asr/data/`default` when path is None.

    Always yaml.safe_load: a configuration file never constructs Python objects. A file that is
    not valid YAML, or not a mapping, raises ConfigError (a ValueError) naming it in one line.
    """
    if path is None:
        text, source = (
            resources.files("asr").joinpath(f"data/{default}").read_text("utf-8"),
            default,
        )
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise yaml_error(source, e) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top, got {show(doc)}")
    return doc, source


def show(value: Any) -> str:
    """A value as an error message shows it (short, one line, YAML's words for null and bools)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(source: str, path: str) -> str:
    return f"{source}: {path}" if path else source


def from_dict(cls: type, doc: Any, source: str, path: str = ""):
    """An instance of dataclass `cls` from a parsed YAML mapping, checked against its fields.

    Keys must be fields of `cls` (fields with metadata {"internal": True} are not keys); values
    must fit the fields' type hints: bool, int, float (an int, or a string such as 1e-5, which
    YAML 1.1 reads as text), str, Path, X | None, Literal[...], list[X], tuple[X, Y], dict,
    dict[str, X] and nested dataclasses. Field metadata "parse" (a function of the value that
    raises Invalid) reads values of a shape of their own; metadata "schema" (a dataclass) checks
    a dict field's mapping against that dataclass and keeps the keys given (null ones left out).
    null for a list, a mapping or a section means its default; missing keys take their defaults;
    a field without a default is required. ConfigError names the file (`source`), the key
    (`path` + key) and what was expected.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _error(source, path, f"expected a mapping, got {show(doc)}")
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")
    }
    for key in doc:
        if key not in fields:
            noun = getattr(cls, "config_noun", "key")
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _error(
                source,
                path,
                f"unknown {noun} {key!r} ({hint}expected one of: {', '.join(fields)})",
                f"{path}.{key}" if path else str(key),
            )
    values = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _error(source, key_path, "missing (a required key)")
            continue
        value = doc[name]
        if value is None and _empty_means_default(hints[name], f):
            continue
        if "schema" in f.metadata:  # a mapping checked against a dataclass, kept as given
            checked = from_dict(f.metadata["schema"], value, source, key_path)
            values[name] = {
                k: getattr(checked, k) for k in value if getattr(checked, k) is not None
            }
            continue
        parse = f.metadata.get("parse")
        try:
            values[name] = parse(value) if parse else _convert(value, hints[name], source, key_path)
        except Invalid as e:
            raise _error(source, key_path, str(e)) from None
    return cls(**values)


def _empty_means_default(hint: Any, f: dataclasses.Field) -> bool:
    """null for a list, a mapping or a section (a key with nothing under it): the default."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return False
    origin = typing.get_origin(hint) or hint
    return origin in (list, dict) or dataclasses.is_dataclass(origin)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_QUOTE = " (put it in quotes: YAML reads it as a number or true/false)"
_WORDS = {bool: "true or false", int: "integer", float: "number", str: "string", Path: "path"}


def _convert(value: Any, hint: Any, source: str, path: str) -> Any:
    """`value` checked against (and converted to) type `hint`; raises Invalid or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(value, option, source, path)
            except (Invalid, ConfigError):
                pass
        try:
            return _convert(value, options[-1], source, path)
        except Invalid:
            if len(options) == 1:
                raise
            words = " or ".join(_WORDS.get(a, getattr(a, "__name__", str(a))) for a in options)
            raise Invalid(f"expected {words}, got {show(value)}") from None
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise Invalid(
            f"expected one of: {', '.join(map(str, args))}, got {show(value)}"
            + (_QUOTE if isinstance(value, bool | int | float) and str in map(type, args) else "")
        )
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Invalid(f"expected true or false, got {show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Invalid(f"expected integer, got {show(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        raise Invalid(f"expected number, got {show(value)}")
    if hint in (str, Path):
        if isinstance(value, str):
            return hint(value)
        raise Invalid(
            f"expected {_WORDS[hint]}, got {show(value)}"
            + (_QUOTE if isinstance(value, int | float) else "")
        )
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {show(value)}")
        item = args[0] if args else Any
        return [_item(v, item, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise Invalid(f"expected a list, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise Invalid(f"expected a list of {len(args)} values, got {show(value)}")
        return tuple(
            _item(v, a, source, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))
        )
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping, got {show(value)}")
        if not args:
            return dict(value)
        return {
            _item(k, args[0], source, f"{path} key {k!r}"): _item(v, args[1], source, f"{path}.{k}")
            for k, v in value.items()
        }
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise Invalid(f"expected {hint.__name__}, got {show(value)}")
    raise TypeError(f"{path}: no schema check for type {hint!r}")


def _item(value: Any, hint: Any, source: str, path: str) -> Any:
    """An element of a list, tuple or mapping: its errors name its own path."""
    try:
        return _convert(value, hint, source, path)
    except Invalid as e:
        raise _error(source, path, str(e)) from None
