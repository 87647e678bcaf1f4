"""`asr transcribe --backend ray`: the same pipeline on a Ray cluster, one model replica per GPU
(or per group of CPU cores), with the same outputs and the same job database.

The driver keeps the job database and hands out recordings in small lots, so a fast replica
takes more of them and a replica that dies costs only its lot. Each replica runs the whole local
pipeline (decoding workers, packing, batching) and sends its transcripts back; the driver writes
them, as a local run does. The inputs must be on a filesystem every node sees at the same path
(NFS, Lustre, a bucket mounted alike everywhere).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from asr.engine.inputs import Job
from asr.engine.transcribe import TranscribeResult, run_jobs
from asr.engine.transcriber import Transcriber
from asr.engine.types import Finished, TranscribeOptions
from asr.outputs import Transcript

log = logging.getLogger(__name__)

LOT = 16
"""Recordings handed to a replica at a time."""


class _Replica:
    """A Ray actor holding one loaded model; runs lots of jobs through the local pipeline."""

    def __init__(self, opts: TranscribeOptions):
        logging.basicConfig(level=logging.WARNING)
        self.transcriber = Transcriber(opts)

    def run(self, jobs: list[dict]) -> list[dict]:
        jobs_ = [Job(**j) for j in jobs]
        return [asdict(f) for f in self.transcriber.run(jobs_)]


def replica_count(opts: TranscribeOptions, resources: dict) -> tuple[int, dict]:
    """How many replicas the cluster holds, and what each one asks Ray for."""
    if opts.device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ValueError("--device cuda with --backend ray: the Ray cluster has no GPU")
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    # each replica runs `parallel` batches at once, on cpu_threads threads each (default 1)
    per = max(1, opts.cpu_threads or 1) * opts.resolved_parallel()
    cpus = int(resources.get("CPU", 1))
    return max(1, cpus // per), {"num_cpus": min(per, cpus)}


def transcribe_ray(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: TranscribeOptions | None = None,
    address: str | None = None,
) -> TranscribeResult:
    """Like `transcribe`, with the recordings spread over a Ray cluster's replicas.

    address: a running cluster ("auto", or "HOST:PORT" from `ray start --head`); None starts a
    local one on this machine.
    """
    import ray

    opts = options or TranscribeOptions()
    out_dir = Path(out_dir).resolve()
    if opts.device == "cuda":
        opts.device_index = (0,)  # Ray gives each replica its own GPU, visible as device 0
    else:  # a replica uses the CPUs Ray gives it, not every core of its node
        opts.cpu_threads = max(1, opts.cpu_threads)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)

    def remote(todo: list[Job]) -> Iterator[Finished]:
        # Not ray.util.ActorPool (read in Ray 2.60.0): get_next_unordered() raises a failed
        # task's error without saying which submitted value (lot) it was, so the lot of a dead
        # replica cannot be failed without reading the pool's private state; and it drops a
        # replica only on ActorDiedError (any other RayError puts it back to take the next lot),
        # and once every replica has died its queued lots are never submitted and
        # map_unordered() just ends (has_next() looks at running tasks only). Here each lot
        # stays paired with its task, and a failed replica is replaced by a fresh one.
        n, res = replica_count(opts, ray.cluster_resources())
        n = min(n, max(1, -(-len(todo) // LOT)))
        log.info("Ray: %d model replica(s), %s each", n, res)
        actor = ray.remote(**res)(_Replica)
        replicas = [actor.remote(opts) for _ in range(n)]
        lots = [[asdict(j) for j in todo[i : i + LOT]] for i in range(0, len(todo), LOT)]
        in_flight: dict = {}
        for r in replicas:
            if lots:
                lot = lots.pop(0)
                in_flight[r.run.remote(lot)] = (r, lot)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            r, lot = in_flight.pop(ref)
            try:
                for f in ray.get(ref):
                    t = f.pop("transcript")
                    yield Finished(**f, transcript=Transcript.from_dict(t) if t else None)
            except ray.exceptions.RayError as e:  # the replica died: its lot fails, not the run
                reason = f"Ray replica failed ({type(e).__name__}: {str(e).splitlines()[0]})"
                for j in lot:
                    yield Finished(j["key"], reason)
                r = actor.remote(opts)
                replicas.append(r)
            if lots:
                lot = lots.pop(0)
                in_flight[r.run.remote(lot)] = (r, lot)
        for r in replicas:
            ray.kill(r)

    return run_jobs(inputs, out_dir, opts, remote)
