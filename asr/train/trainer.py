"""`asr train`: fine-tune a Whisper or wav2vec2 (CTC) model on shards, from a recipe.

One loop for both kinds, on accelerate: a single process, or many under `torchrun` /
`accelerate launch` (DDP; every process reads its own shards, see asr/train/data.py).
Checkpoints are safetensors plus JSON (model, optimizer, scheduler, loop state), written to a
temporary folder and renamed; nothing is ever unpickled. Dropout and SpecAugment are seeded
per batch, and the data stream is a function of the batch index, so a resumed run continues
with the same batches and, on the same hardware, the same losses as an uninterrupted one.

RUN_DIR holds recipe.yaml, train_log.jsonl (losses, throughput, dev WER), logs/rank-N.jsonl
(each process's batches: shards and keys), tensorboard/, checkpoints/step-N/, best/ and final/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from asr.progress import bar as progress_bar
from asr.train.data import ShardStream, dev_batches, split_shards, to_device
from asr.train.recipe import Recipe, TrainOptions
from asr.train.tasks import TASKS

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
FINAL_INFO = "archive_asr.json"
BEST_IN_CHECKPOINT = "best.safetensors"
"""In a checkpoint: RUN_DIR/best/model.safetensors as it was when the checkpoint was saved."""


@dataclass
class TrainResult:
    """Where a run ended."""

    run_dir: Path
    step: int
    resumed_from: int = 0
    main: bool = True  # whether this is the main process (the one that logs and saves)
    final: Path | None = None
    best_wer: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    evaluations: list[dict] = field(default_factory=list)


@dataclass
class _State:
    """The loop's own state, saved with every checkpoint."""

    step: int = 0
    data_position: int = 0  # index of the next batch of this process's stream
    best_wer: float | None = None
    best_step: int | None = None
    best_loss: float | None = None  # the dev loss at best_step: it breaks ties of dev WER
    bad_evals: int = 0
    world_size: int = 1
    num_workers: int = 0


def train(
    recipe: Recipe, shard_dir: str | os.PathLike, run_dir: str | os.PathLike, opts=None
) -> TrainResult:
    """Train `recipe` on SHARD_DIR's train split, evaluating on its dev split; see module doc."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    opts = opts or TrainOptions()
    shard_dir, run_dir = Path(shard_dir), Path(run_dir)
    train_urls = split_shards(shard_dir, recipe.data.train_split)
    dev_urls = split_shards(shard_dir, recipe.data.dev_split)
    t = recipe.train
    # accelerate keeps its settings process-wide; a second train() in the same process (a
    # notebook, the tests) with other settings (bf16 after fp32) must start from a clean state.
    # The distributed part (PartialState: process group, device) is kept.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    acc = Accelerator(
        mixed_precision=t.mixed_precision,
        cpu=t.cpu,
        log_with="tensorboard",
        project_dir=str(run_dir),
        # the main process evaluates alone while the others wait in a collective: give a large
        # dev set time (the default NCCL timeout can be 10 minutes)
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=2))],
    )
    main = acc.is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint_to_resume(run_dir, opts.resume)
    if main:
        _write_recipe(run_dir, recipe, resuming=ckpt is not None)

    # the main process builds first: a CTC vocabulary is made from the training text once
    task = TASKS[recipe.model.kind].build(recipe, run_dir, shard_dir, main) if main else None
    acc.wait_for_everyone()
    if not main:
        task = TASKS[recipe.model.kind].build(recipe, run_dir, shard_dir, main)
    model = task.model
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    o = recipe.optim
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
    )
    # stepped here once per optimizer step (accelerate's wrapper would step it once per process)
    scheduler = get_scheduler(
        o.schedule, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=o.max_steps
    )
    state = _State(world_size=acc.num_processes, num_workers=recipe.data.num_workers)
    if ckpt is not None:
        from safetensors.torch import load_model

        load_model(model, str(ckpt / "model.safetensors"))
    model, optimizer = acc.prepare(model, optimizer)
    if ckpt is not None:
        state = _load_checkpoint(ckpt, optimizer, scheduler, acc, state)
        if main:
            _restore_best(ckpt, run_dir, state)
            log.info("resuming from %s (step %d)", ckpt, state.step)
    resumed_from = state.step

    stream = ShardStream(
        train_urls,
        recipe.data,
        task.prepare_train,
        task.collate,
        seed=t.seed,
        rank=acc.process_index,
        world=acc.num_processes,
        start=state.data_position,
    )
    nw = recipe.data.num_workers
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=nw, prefetch_factor=4 if nw else None
    )
    if main:
        flat = _flat(recipe.to_dict())
        acc.init_trackers("tensorboard", config=flat)
    rank_log = run_dir / "logs" / f"rank-{acc.process_index}.jsonl"
    rank_log.parent.mkdir(exist_ok=True)
    result = TrainResult(run_dir, state.step, resumed_from=resumed_from, main=main)
    window = torch.zeros(4, device=acc.device)  # loss sum, samples, audio seconds, label tokens
    window_steps, window_t0 = 0, time.perf_counter()
    bar = progress_bar("train", o.max_steps, opts.progress if main else False, unit="step")
    bar.update(state.step)
    model.train()
    batches = iter(loader)
    stop = False
    with open(rank_log, "a", encoding="utf-8") as rlog:
        while state.step < o.max_steps and not stop:
            step_loss = 0.0
            for micro in range(o.grad_accum):
                batch = next(batches)
                # dropout and SpecAugment draw from a generator seeded by the batch index
                torch.manual_seed(t.seed * 1_000_003 + batch["_index"])
                sync = micro == o.grad_accum - 1
                with nullcontext() if sync else acc.no_sync(model):
                    loss = model(**to_device(batch, acc.device)).loss / o.grad_accum
                    acc.backward(loss)
                step_loss += float(loss.detach())
                window += torch.tensor(
                    [0.0, len(batch["_keys"]), batch["_seconds"], task.tokens_in(batch)],
                    device=acc.device,
                )
                state.data_position = batch["_index"] + 1
                rlog.write(json.dumps(_batch_record(state.step + 1, micro, batch)) + "\n")
            if o.max_grad_norm:
                acc.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window[0] += step_loss
            window_steps += 1
            rlog.write(json.dumps({"step": state.step, "loss": round(step_loss, 6)}) + "\n")
            rlog.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if state.step % t.log_every == 0 or state.step == o.max_steps:
                totals = acc.reduce(window, reduction="sum")
                wall = time.perf_counter() - window_t0
                record = {
                    "step": state.step,
                    "loss": round(float(totals[0]) / (window_steps * acc.num_processes), 6),
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": round(float(totals[1]) / wall, 3),
                    "audio_s_per_s": round(float(totals[2]) / wall, 3),
                    "tokens_per_s": round(float(totals[3]) / wall, 3),
                }
                if main:
                    _append(run_dir / "train_log.jsonl", record)
                    acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, state.step)
                window.zero_()
                window_steps, window_t0 = 0, time.perf_counter()
            if state.step % t.eval_every == 0 or state.step == o.max_steps:
                stop = _evaluate(acc, task, model, recipe, dev_urls, run_dir, state, result)
                window_t0 = time.perf_counter()
            if opts.stop_after is not None and state.step >= opts.stop_after:
                stop = True
            if state.step % t.save_every == 0 or stop or state.step == o.max_steps:
                keep = t.keep_checkpoints
                _save_checkpoint(acc, model, optimizer, scheduler, state, run_dir, keep)
    bar.close()
    result.step = state.step
    result.best_wer, result.best_step = state.best_wer, state.best_step
    finished = state.step >= o.max_steps or result.stopped_early
    if finished:
        result.final = _save_final(acc, task, model, recipe, shard_dir, run_dir, state)
    acc.end_training()
    return result


def _evaluate(acc, task, model, recipe, dev_urls, run_dir, state, result) -> bool:
    """Dev loss and WER on the main process; returns whether to stop early (on every process)."""
    stop = torch.zeros(1, device=acc.device)
    if acc.is_main_process:
        t0 = time.perf_counter()
        net = acc.unwrap_model(model)
        net.eval()
        hyps, refs, losses = [], [], []
        for batch, texts in dev_batches(
            dev_urls,
            task.prepare,
            task.collate,
            recipe.train.eval_batch_size,
            recipe.data.dev_max_samples,
            recipe.data.text_field,
        ):
            # only the model under autocast: the feature extractors compute in float32
            with torch.no_grad(), acc.autocast():
                losses.append(float(net(**to_device(batch, acc.device)).loss))
                hyps += task.predict(net, batch, recipe.train.eval_max_new_tokens)
            refs += texts
        net.train()
        if not refs:
            raise RuntimeError(f"no dev sample could be evaluated ({', '.join(dev_urls)})")
        wer, cer = dev_error_rates(refs, hyps)
        record = {
            "step": state.step,
            "dev_loss": round(sum(losses) / max(1, len(losses)), 6),
            "dev_wer": round(wer, 6),
            "dev_cer": round(cer, 6),
            "dev_samples": len(refs),
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]],
        }
        loss = record["dev_loss"]
        # a tie of dev WER (common on a small dev set) goes to the lower dev loss (a state
        # saved before best_loss existed keeps its best on ties)
        best_loss = state.best_loss if state.best_loss is not None else -math.inf
        if state.best_wer is None or (wer, loss) < (state.best_wer, best_loss):
            state.best_wer, state.best_step, state.bad_evals = wer, state.step, 0
            state.best_loss = loss
            _save_weights(acc.unwrap_model(model), run_dir / "best")
        else:
            state.bad_evals += 1
        record["best_wer"] = round(state.best_wer, 6)
        _append(run_dir / "train_log.jsonl", record)
        acc.log({f"dev/{k}": record[k] for k in ("dev_loss", "dev_wer", "dev_cer")}, state.step)
        log.info(
            "step %d: dev loss %.4f, WER %.2f%%, CER %.2f%% (%d samples)",
            state.step,
            record["dev_loss"],
            100 * wer,
            100 * cer,
            len(refs),
        )
        result.evaluations.append(record)
        patience = recipe.train.early_stopping_patience
        if patience and state.bad_evals >= patience:
            log.info("early stopping: %d evaluations without a better dev WER", state.bad_evals)
            stop += 1
    stop = acc.reduce(stop, reduction="sum")
    best = torch.tensor(
        [
            state.best_wer if state.best_wer is not None else -1.0,
            state.best_step or 0,
            state.best_loss if state.best_loss is not None else -1.0,
        ],
        device=acc.device,
        dtype=torch.float64,
    )
    if acc.num_processes > 1:  # every process keeps the same loop state
        from accelerate.utils import broadcast

        best = broadcast(best)
        state.best_wer = None if best[0] < 0 else float(best[0])
        state.best_step = int(best[1]) or None
        state.best_loss = None if best[2] < 0 else float(best[2])
    result.stopped_early = bool(stop.item())
    return result.stopped_early


def dev_error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """Corpus WER and CER after Whisper's basic (multilingual, diacritics kept) normaliser;
    utterances whose reference normalises to nothing are left out."""
    from asr.metrics import NormalizerSpec, score_pairs

    rows = [{"id": str(i), "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, hyps))]
    utts = [u for u in score_pairs(rows, NormalizerSpec("whisper-basic")) if u.words]
    if not utts:
        return 0.0, 0.0
    wer = sum(u.errors for u in utts) / sum(u.words for u in utts)
    return wer, sum(u.char_errors for u in utts) / sum(u.chars for u in utts)


# --- checkpoints -------------------------------------------------------------------------


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _checkpoint_to_resume(run_dir: Path, resume: str) -> Path | None:
    if resume == "never":
        if _checkpoints(run_dir):
            raise FileExistsError(
                f"{run_dir}: holds checkpoints; pass --resume auto to continue, or another --out"
            )
        return None
    if resume == "auto":
        found = _checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (no state.json)")
    return path


def _save_weights(model, out: Path) -> None:
    from safetensors.torch import save_model

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _save_checkpoint(acc, model, optimizer, scheduler, state: _State, run_dir: Path, keep: int):
    """checkpoints/step-N: model and optimizer in safetensors, the rest JSON; then prune."""
    from safetensors.torch import save_file, save_model

    acc.wait_for_everyone()
    if acc.is_main_process:
        out = run_dir / CHECKPOINTS / f"step-{state.step:07d}"
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(acc.unwrap_model(model), str(tmp / "model.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        extra = {
            "optimizer": meta,
            "scheduler": scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "state": state.__dict__,
        }
        (tmp / "state.json").write_text(json.dumps(extra, default=_jsonable), encoding="utf-8")
        best = run_dir / "best" / "model.safetensors"
        if state.best_step is not None and best.is_file():
            _link_or_copy(best, tmp / BEST_IN_CHECKPOINT)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        for old in _checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst the same file as src: a hard link (no space: best/ is replaced by renaming, never
    written in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _restore_best(ckpt: Path, run_dir: Path, state: _State) -> None:
    """RUN_DIR/best as the checkpoint knew it: an evaluation after the checkpoint (lost with
    the run that made it) may have replaced best/ with weights the resumed state never saw."""
    kept = ckpt / BEST_IN_CHECKPOINT
    if state.best_step is not None and kept.is_file():
        tmp = run_dir / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _link_or_copy(kept, tmp / "model.safetensors")
        shutil.rmtree(run_dir / "best", ignore_errors=True)
        tmp.rename(run_dir / "best")
    elif state.best_step is None:
        shutil.rmtree(run_dir / "best", ignore_errors=True)


def _load_checkpoint(ckpt: Path, optimizer, scheduler, acc, state: _State) -> _State:
    from safetensors.torch import load_file

    extra = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(ckpt / "optimizer.safetensors"), device=str(acc.device))
    optimizer.load_state_dict(_optimizer_state(tensors, extra["optimizer"]))
    scheduler.load_state_dict(extra["scheduler"])
    if extra.get("scaler") and acc.scaler is not None:
        acc.scaler.load_state_dict(extra["scaler"])
    saved = _State(**extra["state"])
    if (saved.world_size, saved.num_workers) != (state.world_size, state.num_workers):
        log.warning(
            "%s was saved with %d processes x %d data workers, now %d x %d: the data order "
            "after this resume differs from an uninterrupted run",
            ckpt,
            saved.world_size,
            saved.num_workers,
            state.world_size,
            state.num_workers,
        )
    saved.world_size, saved.num_workers = state.world_size, state.num_workers
    return saved


def _optimizer_tensors(sd: dict) -> tuple[dict, dict]:
    """An optimizer state dict as flat tensors (for safetensors) and JSON metadata."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_final(acc, task, model, recipe, shard_dir, run_dir, state: _State) -> Path | None:
    """RUN_DIR/final: the best (or last) weights in Hugging Face format with the processor."""
    from safetensors.torch import load_model

    acc.wait_for_everyone()
    out = run_dir / "final"
    if acc.is_main_process:
        net = acc.unwrap_model(model)
        use_best = recipe.train.final == "best" and (run_dir / "best/model.safetensors").is_file()
        if use_best:
            load_model(net, str(run_dir / "best/model.safetensors"))
        if recipe.train.gradient_checkpointing:
            net.gradient_checkpointing_disable()
            net.config.use_cache = True
        tmp = out.with_name(".final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        task.save(net, tmp)
        info = {
            "kind": recipe.model.kind,
            "step": state.step,
            "weights": "best" if use_best else "last",
            "best_step": state.best_step,
            "dev_wer": state.best_wer,
            "shards": str(shard_dir.resolve()),
            "dev_split": recipe.data.dev_split,
            "text_field": recipe.data.text_field,
            "language": recipe.model.language,
            "recipe": recipe.to_dict(),
        }
        (tmp / FINAL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log.info("final model (%s weights) in %s", info["weights"], out)
    acc.wait_for_everyone()
    return out


# --- small helpers -----------------------------------------------------------------------


def _batch_record(step: int, micro: int, batch: dict) -> dict:
    keys = batch["_keys"]
    return {
        "step": step,
        "micro": micro,
        "index": batch["_index"],
        "epoch": batch["_epoch"],
        "shards": batch["_shards"],
        "samples": len(keys),
        "keys_sha1": hashlib.sha1("\n".join(keys).encode()).hexdigest(),
    }


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(v):
    if torch.is_tensor(v):
        return v.tolist()
    if isinstance(v, tuple | set):
        return list(v)
    return str(v)


def _flat(d: dict, prefix: str = "") -> dict:
    """A recipe as flat scalars (TensorBoard's hyperparameter view takes nothing else)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


def _write_recipe(run_dir: Path, recipe: Recipe, resuming: bool) -> None:
    """RUN_DIR/recipe.yaml: the recipe as run (overrides applied); a resume that changes it is
    logged, since the new values apply from the resumed step on."""
    path = run_dir / "recipe.yaml"
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)
    if resuming and path.is_file() and path.read_text(encoding="utf-8") != text:
        log.warning("%s: the recipe differs from the one this run started with", path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
