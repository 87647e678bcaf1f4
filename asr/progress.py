"""Progress bars of the long-running stages, all alike: on a terminal unless told otherwise."""

from __future__ import annotations

from tqdm import tqdm

HOURS_FORMAT = "{l_bar}{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}, {rate_fmt}]"


def bar(desc: str, total: float, progress: bool | None, unit: str = "h") -> tqdm:
    """A tqdm bar; unit "h" counts hours of audio. progress None: shown only on a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        bar_format=HOURS_FORMAT if unit == "h" else None,
        disable=None if progress is None else not progress,
    )
