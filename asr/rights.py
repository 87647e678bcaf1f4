"""Rights policy: which uses (train, transcribe) a catalogue's rights value allows.

Rights differ per item and catalogues spell them freely ("CC BY 4.0", "CC-BY-4.0",
"public domain"), so a policy is an ordered list of regular expressions over a normalised
value. The default (asr/data/rights_policy.yaml) allows training only on public domain, CC0,
CC BY and CC BY-SA material; anything else, unknown or empty rights included, is transcribe only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from asr.config import load_yaml

USES = ("train", "transcribe")


@dataclass
class Rule:
    name: str
    pattern: re.Pattern
    uses: tuple[str, ...]


@dataclass
class RightsPolicy:
    """An ordered list of rules; the first match decides, `default` otherwise."""

    rules: list[Rule] = field(default_factory=list)
    default: tuple[str, ...] = ("transcribe",)
    source: str = "default"

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> RightsPolicy:
        """Read a policy YAML file; None gives the documented default policy."""
        doc, source = load_yaml(path, "rights_policy.yaml")
        source = "default" if path is None else source
        try:
            rules = [
                Rule(
                    name=str(r.get("name") or r["pattern"]),
                    pattern=re.compile(str(r["pattern"])),
                    uses=_check_uses(r.get("uses", []), source),
                )
                for r in doc.get("rules", [])
            ]
            default = _check_uses(doc.get("default", ["transcribe"]), source)
        except (KeyError, TypeError, AttributeError, re.error) as e:
            raise ValueError(f"{source}: not a valid rights policy ({e})") from None
        return cls(rules=rules, default=default, source=source)

    def uses(self, rights: str | None) -> list[str]:
        """The uses allowed for a rights value, in the order of USES."""
        value = normalise(rights)
        if value:
            for rule in self.rules:
                if rule.pattern.match(value):
                    return [u for u in USES if u in rule.uses]
        return [u for u in USES if u in self.default]

    def allows(self, rights: str | None, use: str) -> bool:
        return use in self.uses(rights)


def normalise(rights: str | None) -> str:
    """Lower case, trimmed, with runs of spaces and underscores as one '-'."""
    return re.sub(r"[\s_]+", "-", (rights or "").strip().lower())


def _check_uses(uses: object, source: str) -> tuple[str, ...]:
    if not isinstance(uses, list) or any(u not in USES for u in uses):
        raise TypeError(f"uses must be a list of {list(USES)}, got {uses!r}")
    return tuple(uses)
