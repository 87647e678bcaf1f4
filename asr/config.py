"""Reading the project's YAML configuration files (rights policy, alignment rules, recipes)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml


def load_yaml(path: str | os.PathLike | None, default: str) -> tuple[dict, str]:
    """(document, source) of a YAML file, or of the packaged asr/data/`default` when path is None.

    Always yaml.safe_load: a configuration file never constructs Python objects. A file that is
    not valid YAML, or not a mapping, raises ValueError naming it.
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
        raise ValueError(f"{source}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: expected a mapping at the top, got {type(doc).__name__}")
    return doc, source
