"""Rights policy: catalogue spellings of licences, custom policies, bad policy files."""

from __future__ import annotations

import pytest

from asr.rights import RightsPolicy

TRAIN = [
    "public domain",
    "Public Domain",
    "PD",
    "CC0",
    "CC0-1.0",
    "cc0 1.0",
    "CC-BY-4.0",
    "CC BY 4.0",
    "cc_by_3.0",
    "CC-BY",
    "CC BY-SA 4.0",
    "CC-BY-SA-3.0",
    "Creative Commons Attribution 4.0",
    "public domain (LJSpeech 1.1); repo MPL-2.0",
    "CC-BY-4.0 (Multilingual LibriSpeech, Polish)",
]
TRANSCRIBE_ONLY = [
    "",
    None,
    "   ",
    "In copyright",
    "All rights reserved",
    "CC BY-NC 4.0",
    "CC-BY-NC-SA-4.0",
    "CC BY-ND 4.0",
    "cc-by-nc",
    "Creative Commons Attribution-NonCommercial 4.0",
    "AN4 License Terms (CMU, free for any purpose)",
    "unknown",
]


@pytest.mark.parametrize("rights", TRAIN)
def test_default_policy_allows_training(rights):
    assert RightsPolicy.load().uses(rights) == ["train", "transcribe"]


@pytest.mark.parametrize("rights", TRANSCRIBE_ONLY)
def test_default_policy_transcribe_only(rights):
    assert RightsPolicy.load().uses(rights) == ["transcribe"]


def test_custom_policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "default: []\nrules:\n"
        "  - {pattern: 'an4', uses: [train, transcribe]}\n"
        "  - {pattern: 'in-copyright', uses: [transcribe]}\n"
    )
    policy = RightsPolicy.load(path)
    assert policy.uses("AN4 License Terms") == ["train", "transcribe"]
    assert policy.uses("In copyright") == ["transcribe"]
    assert policy.uses("CC0") == []


@pytest.mark.parametrize(
    "text", ["rules: [{pattern: '('}]", "rules: [{uses: [train]}]", "default: [sell]", "- a\n- b"]
)
def test_bad_policy_names_the_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml"):
        RightsPolicy.load(path)
