"""Measuring a command as users run it: wall time and the peak RSS of its process tree."""

from __future__ import annotations

import json
import subprocess
import sys


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall s, peak RSS MiB of its largest process, stdout).

    A small wrapper process runs it and reports getrusage(RUSAGE_CHILDREN).ru_maxrss, the peak
    of the largest process in the tree it waited for (decoding workers included).
    """
    wrapper = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stderr.write(p.stderr)\n"
        "print(json.dumps({'rc': p.returncode, 'wall': w, 'rss_kb': r, 'out': p.stdout}))\n"
    )
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"]:
        raise RuntimeError(f"{cmd} failed:\n{p.stderr}")
    return res["wall"], res["rss_kb"] / 1024, res["out"]
