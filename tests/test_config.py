"""Bench configurations and training recipes are checked against their dataclasses: a wrong type
or an unknown key is a ConfigError naming the file (or --set option), the key and what was
expected, and the `asr` command prints it as one line (exit code 1), never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from asr.bench.config import load_config
from asr.config import ConfigError, from_dict, load_yaml
from asr.train.recipe import load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
ASR = str(Path(sys.executable).parent / "asr")  # the console script beside this interpreter
TINY = ROOT / "recipes/whisper-tiny-cpu.yaml"

TESTSET = "testsets: [{name: a, manifest: x.csv}]\n"
MODEL = "models: [{name: m, path: tiny.en}]\n"

# (config text, the message after "FILE: ") for each bad bench configuration
BAD_BENCH = {
    "samples": (
        TESTSET + MODEL + "bootstrap: {samples: many}\n",
        "bootstrap.samples: expected integer, got 'many'",
    ),
    "breakdown": (
        "testsets: [{name: a, manifest: x.csv, breakdown: 5}]\n" + MODEL,
        "testsets[0].breakdown: expected a list, got 5",
    ),
    "beam_size": (
        TESTSET + "models: [{name: m, path: tiny.en, options: {beam_size: five}}]\n",
        "models[0].options.beam_size: expected integer, got 'five'",
    ),
    "gate_typo": (
        TESTSET + MODEL + "gate: {max_wer_increse: 0.01}\n",
        "gate: unknown key 'max_wer_increse' (did you mean 'max_wer_increase'? "
        "expected one of: max_wer_increase)",
    ),
    "yaml_syntax": (
        TESTSET + MODEL + "gate: {max_wer_increase: [0.01\n",
        "not valid YAML (line 4, column 1): while parsing a flow sequence; "
        "expected ',' or ']', but got '<stream end>'",
    ),
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ASR, *args], capture_output=True, text=True, timeout=120)


def one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 1 and exactly one line on stderr: the message, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.splitlines() == [f"ERROR asr: {message}"], r.stderr


def test_shipped_configs_load():
    benches = sorted((ROOT / "benchmarks").glob("*.yaml"))
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert benches and len(recipes) >= 5
    for path in benches:
        cfg = load_config(path)
        assert cfg.testsets and cfg.models, path
    for path in recipes:
        r = load_recipe(path)
        assert r.source == str(path) and r.description, path


def test_nightly_values_survive_the_check():
    cfg = load_config(ROOT / "benchmarks/nightly.yaml")
    assert (cfg.bootstrap_samples, cfg.seed, cfg.max_wer_increase) == (1000, 0, 0.005)
    assert cfg.models[0].options == {"beam_size": 5, "compute_type": "int8"}
    assert cfg.testsets[0].breakdown == ["source_repo"]
    assert cfg.testsets[2].text_file and cfg.testsets[2].normalizer.name == "whisper-english"


@pytest.mark.parametrize("case", sorted(BAD_BENCH))
def test_bad_bench_config_names_file_and_key(case, tmp_path):
    text, message = BAD_BENCH[case]
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {message}"
    one_line_error(run("bench", str(path)), f"{path}: {message}")


def test_more_bench_mistakes(tmp_path):
    path = tmp_path / "bench.yaml"
    cases = {
        TESTSET + MODEL + "gates: {}\n": "unknown key 'gates' (did you mean 'gate'?",
        "testsets: [{name: a}]\n" + MODEL: "testsets[0].manifest: missing (a required key)",
        "testsets: [{name: a, manifest: x.csv, language: no}]\n" + MODEL: (
            "testsets[0].language: expected string, got false (put it in quotes"
        ),
        "testsets: [{name: a, manifest: x.csv, breakdown: [x, 3]}]\n" + MODEL: (
            "testsets[0].breakdown[1]: expected string, got 3"
        ),
        TESTSET + "models: [{name: m, path: p, options: {beams: 2}}]\n": (
            "models[0].options: unknown option 'beams' (did you mean 'beam_size'?"
        ),
        TESTSET + "models: [{name: m, path: p, testsets: [b]}]\n": (
            "models[0].testsets: no test set named 'b' (expected one of: a)"
        ),
        "testsets: [{name: a, manifest: x.csv, normalizer: {name: none, x: 1}}]\n" + MODEL: (
            "testsets[0].normalizer: normalizer none: unknown option(s) ['x']"
        ),
        "testsets: [{name: a, manifest: x.csv, text_file: 'yes'}]\n" + MODEL: (
            "testsets[0].text_file: expected true or false, got 'yes'"
        ),
        "- a list\n": "expected a mapping at the top, got ['a list']",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
            load_config(path)
    path.write_text(TESTSET + "models: [{name: m, path: p, options: {beam_size: null}}]\n")
    assert load_config(path).models[0].options == {}  # null: the default


BAD_RECIPE = {
    "train:\n  steps: 5\n": "train: unknown key 'steps' (expected one of: mixed_precision,",
    "optim:\n  max_steps: many\n": "optim.max_steps: expected integer, got 'many'",
    "optim:\n  lr: fast\n": "optim.lr: expected number, got 'fast'",
    "optim:\n  betas: [0.9]\n": "optim.betas: expected a list of 2 values, got [0.9]",
    "model:\n  kind: rnn\n": "model.kind: expected one of: whisper, ctc, got 'rnn'",
    "train:\n  mixed_precision: no\n": (
        "train.mixed_precision: expected one of: no, fp16, bf16, got false (put it in quotes"
    ),
    "trian:\n  seed: 1\n": "unknown key 'trian' (did you mean 'train'? expected one of: model,",
    "data: 5\n": "data: expected a mapping, got 5",
    "data:\n  epoch_steps: 0\n": "data.epoch_steps: must be at least 1",
    "optim:\n  lr: [1\n": "not valid YAML (line",
}


@pytest.mark.parametrize("addition", list(BAD_RECIPE), ids=range(len(BAD_RECIPE)))
def test_bad_recipe_names_file_and_key(addition, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(TINY.read_text() + "\n" + addition)  # a later key wins in YAML
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: {BAD_RECIPE[addition]}"), str(e.value)


SETS = {  # --set option: message after "--set 'OPTION': "
    "optim.lr=[1,": "not valid YAML (line 1, column 4): while parsing a flow node; "
    "expected the node content, but found '<stream end>'",
    "optim.max_steps=many": "optim.max_steps: expected integer, got 'many'",
    "optim.learning_rate=1e-4": "optim: unknown key 'learning_rate' (expected one of: lr,",
    "model.language=no": "model.language: expected string, got false (put it in quotes",
    "optim.lr": "expected section.key=value (e.g. optim.lr=1e-4)",
    "data.num_workers.x=1": "num_workers is not a section",
}


@pytest.mark.parametrize("option", list(SETS))
def test_bad_set_option_names_the_option(option):
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, ["train.seed=3", option])
    assert str(e.value).startswith(f"--set {option!r}: {SETS[option]}"), str(e.value)


def test_set_values_are_typed_and_checked():
    r = load_recipe(TINY, ["optim.lr=1e-4", "optim.betas=[0.8, 0.9]", "augment.spec_augment=true"])
    assert (r.optim.lr, r.optim.betas, r.augment.spec_augment) == (1e-4, (0.8, 0.9), True)
    r = load_recipe(TINY, ["model.language='no'", "data.max_batch_seconds=30"])
    assert (r.model.language, r.data.max_batch_seconds) == ("no", 30.0)


def test_train_cli_errors_are_one_line(tmp_path):
    out = tmp_path / "run"
    train = ["train", str(TINY), "--shards", str(tmp_path / "none"), "--out", str(out)]
    r = run(*train, "--set", "optim.lr=[1,")
    one_line_error(r, f"--set 'optim.lr=[1,': {SETS['optim.lr=[1,']}")
    r = run(*train, "--set", "optim.max_steps=many")
    one_line_error(r, "--set 'optim.max_steps=many': optim.max_steps: expected integer, got 'many'")
    bad = tmp_path / "recipe.yaml"
    bad.write_text(TINY.read_text() + "\ntrain:\n  eval_every: often\n")
    r = run("train", str(bad), "--shards", str(tmp_path / "none"), "--out", str(out))
    one_line_error(r, f"{bad}: train.eval_every: expected integer, got 'often'")
    assert not out.exists()


def test_recipe_schema_is_every_field():
    """A recipe written out (RUN_DIR/recipe.yaml) reads back the same: every field is a key."""
    r = load_recipe(TINY)
    again = recipe_from_dict(r.to_dict(), r.source)
    assert again == r
    with pytest.raises(ConfigError, match="unknown key 'source'"):
        recipe_from_dict({**r.to_dict(), "source": "x"})
    assert again.optim.betas == (0.9, 0.98) and isinstance(again.optim.betas, tuple)


@dataclass
class _Section:
    n: int = 1
    x: float = 0.5
    on: bool = False
    mode: Literal["a", "b"] = "a"
    names: list[str] = field(default_factory=list)
    maybe: str | None = None


@dataclass
class _Doc:
    required: str
    section: _Section = field(default_factory=_Section)


def test_from_dict_types():
    d = from_dict(_Doc, {"required": "r", "section": {"x": "1e-5", "n": 3, "names": None}}, "f")
    assert d == _Doc("r", _Section(n=3, x=1e-5))
    assert from_dict(_Doc, {"required": "r", "section": None}, "f").section == _Section()
    bad = {
        "n": (True, "expected integer, got true"),
        "x": ("1e-5x", "expected number, got '1e-5x'"),
        "on": (1, "expected true or false, got 1"),
        "mode": ("c", "expected one of: a, b, got 'c'"),
        "maybe": ([], "expected string, got []"),
    }
    for key, (value, problem) in bad.items():
        with pytest.raises(ConfigError) as e:
            from_dict(_Doc, {"required": "r", "section": {key: value}}, "f")
        assert str(e.value) == f"f: section.{key}: {problem}"
        assert (e.value.source, e.value.key) == ("f", f"section.{key}")
    with pytest.raises(ConfigError, match="^f: required: missing"):
        from_dict(_Doc, {}, "f")


def test_yaml_error_is_one_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: [1\nb: {\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(path, "")
    assert str(e.value).startswith(f"{path}: not valid YAML (line ") and "\n" not in str(e.value)
