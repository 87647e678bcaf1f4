"""The benchmark report: a static HTML page (plots as PNG beside it) and a markdown summary.

Per model and test set: WER over time with its 95% confidence band, and RTFx over time; for the
latest run, bars per subset of every breakdown field and the most frequent confusions; a table
of the latest run. Plots are drawn with matplotlib (no server, no JavaScript library).
"""

from __future__ import annotations

import html
import os
from collections import defaultdict
from pathlib import Path

from asr.bench.history import History


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_report(hist: History, out: Path) -> Path:
    """Write out/index.html, out/summary.md and the plots; returns the HTML path."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the report needs matplotlib: pip install 'archive-asr[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = hist.results()
    runs = [r["run_id"] for r in hist.runs()]
    latest_id = next((rid for rid in reversed(runs) if any(r["run_id"] == rid for r in rows)), None)
    latest = [r for r in rows if r["run_id"] == latest_id]
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        series[(r["model"], r["testset"])].append(r)

    images: list[tuple[str, str]] = []
    for testset in sorted({k[1] for k in series}):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
        for (model, ts), pts in sorted(series.items()):
            if ts != testset:
                continue
            x = list(range(len(pts)))
            wer = [100 * p["wer"] for p in pts]
            ax1.plot(x, wer, marker="o", label=model)
            ax1.fill_between(
                x, [100 * p["ci_low"] for p in pts], [100 * p["ci_high"] for p in pts], alpha=0.2
            )
            ax2.plot(x, [p["rtfx"] for p in pts], marker="o", label=model)
        dates = [
            p["started"][5:16].replace("T", " ")
            for p in max((v for k, v in series.items() if k[1] == testset), key=len)
        ]
        for ax, title in ((ax1, "WER % (95% CI)"), (ax2, "RTFx")):
            ax.set_title(f"{testset}: {title}")
            ax.set_xlabel("run (UTC)")
            ax.set_xticks(range(len(dates)), dates, rotation=30, fontsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"history-{_safe(testset)}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        images.append((name, f"{testset}: WER and RTFx over runs"))
    for r in latest:
        for field_name, groups in (r["breakdown"] or {}).items():
            if not groups:
                continue
            fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(groups) + 2), 3.2))
            labels = list(groups)
            ax.bar(labels, [100 * g["wer"] for g in groups.values()], color="#4c72b0")
            ax.set_title(f"{r['model']} on {r['testset']}: WER % by {field_name}")
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
            fig.tight_layout()
            name = f"subsets-{_safe(r['model'])}-{_safe(r['testset'])}-{_safe(field_name)}.png"
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            images.append((name, f"{r['model']} on {r['testset']} by {field_name}"))

    head = ["model", "test set", "WER %", "95% CI", "CER %", "S/D/I", "utts", "audio h", "RTFx"]
    head += ["peak MiB", "normalizer"]
    table = []
    for r in latest:
        table.append(
            [
                r["model"],
                r["testset"],
                _pct(r["wer"]),
                f"{_pct(r['ci_low'])}-{_pct(r['ci_high'])}",
                _pct(r["cer"]),
                f"{r['substitutions']}/{r['deletions']}/{r['insertions']}",
                str(r["n_utterances"]),
                f"{r['audio_seconds'] / 3600:.3f}",
                f"{r['rtfx']:.1f}",
                f"{r['peak_rss_mib']:.0f}",
                r["normalizer"],
            ]
        )
    md = [f"# WER benchmark: run {latest_id}", ""]
    md += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    md += ["", f"{len(runs)} runs in {hist.path}."]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    e = html.escape
    confusion_html = ""
    for r in latest:
        items = "".join(
            f"<li>{e(c['ref'] or '∅')} → {e(c['hyp'] or '∅')} ({c['count']})</li>"
            for c in (r["confusions"] or [])
        )
        confusion_html += f"<h3>{e(r['model'])} on {e(r['testset'])}</h3><ul>{items}</ul>"
    figures = "".join(
        f'<figure><img class="plot" src="{e(n)}" alt="{e(a)}">'
        f"<figcaption>{e(a)}</figcaption></figure>"
        for n, a in images
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>WER benchmark</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>WER benchmark</h1>
<p>Latest run {e(str(latest_id))}, {len(runs)} runs in the history.</p>
<table><tr>{"".join(f"<th>{e(h)}</th>" for h in head)}</tr>
{"".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table)}
</table>
<h2>Plots</h2>
{figures}
<h2>Most frequent errors (latest run)</h2>
{confusion_html}
<script>
// the test reads this: how many plots the browser actually decoded
window.addEventListener("load", () => {{
  const imgs = [...document.querySelectorAll("img.plot")];
  document.body.dataset.plots = imgs.length;
  document.body.dataset.plotsRendered = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")
    return out / "index.html"
