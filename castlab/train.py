"""The training loop for every castlab method, and one-shot pruning runs.

``run_training(config, run_dir)`` is the whole contract the sweep relies on: it writes
``config.yaml`` first, a checkpoint while running (resumed bit-exactly when present),
``curve.parquet`` and ``model/`` at the end, and ``result.parquet`` LAST (its presence means done).
A run that fails (NaN loss, failed N:M verification, a crash) still writes a row with
``status='failed'`` and the reason. Under ``torchrun`` the same loop runs DDP (gloo on CPU,
NCCL on CUDA). The device comes from ``castlab.device`` (config field ``device``); the model,
teacher, batches, masks and optimizer state live there, and loss values reach the host only at
log steps (``LOSS_SYNC_STEPS``), so a GPU never waits on Python in the hot loop.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from castlab import __version__, checkpoint, provenance
from castlab.config import ONESHOT_METHODS, TrainConfig, save_yaml
from castlab.device import (
    device_columns,
    distributed_backend,
    prepare_device,
    resolve_device,
    synchronize,
    teacher_copy,
)
from castlab.errors import UserError
from castlab.evaluate import (
    EVAL_BATCH_TOKENS,
    autocast_context,
    check_seq_len,
    perplexity,
    shifted_labels,
)
from castlab.methods import make_method
from castlab.models import (
    build_preset,
    count_parameters,
    in_scope_linears,
    is_preset,
    load_pretrained,
)
from castlab.schedule import lr_at, resolve_lr, total_steps_for
from castlab.tracking import objective_name, open_trackers

# Most steps between two reads of the training loss on the host (each read waits for the GPU);
# eval, checkpoint and final steps read it too. The NaN check runs on those reads.
LOSS_SYNC_STEPS = 32


# Stream seed of the lambda-auto probe batches: the same for every run seed (see measure_auto_lambda)
LAMBDA_PROBE_SEED = 10_007
# Result-row columns of a sparse run's mask life (castlab.sparsity.masklife; NaN for the others)
MASK_LIFE_COLUMNS = ("mask_flip_rate", "mask_drift", "mask_drift_half", "masked_step_lr")


class RunFailed(Exception):
    """A run that cannot produce a valid result (NaN loss, failed verification)."""


# ----------------------------------------------------------------------------------------------
# small pure pieces


# Masked/kept |theta| at the end below which the decay counts as done (no decay-budget warning)
DECAY_DONE_RATIO = 1e-3
# wsd schedule: the share of the steps over which the lr falls linearly to min_lr_ratio * peak
def git_sha() -> str:
    """The commit of the castlab checkout in use, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# setup


@dataclass
class RunContext:
    """Everything a run holds while it trains."""

    cfg: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    test_tokens: torch.Tensor
    teacher: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1
    curve: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0


def load_data_and_model(cfg: TrainConfig):
    """Corpus, tokenizer, token streams and the starting model for ``cfg``."""
    from transformers import AutoTokenizer

    from castlab.data import get_tokenizer, load_corpus, split_token_ids

    corpus = load_corpus(cfg.corpus)
    if cfg.init is None:
        if not is_preset(cfg.model):
            raise UserError(f"model: '{cfg.model}' is not a ladder preset; dense pretraining from "
                            "scratch needs a preset (give init to continue an existing model)")
        tokenizer, _ = get_tokenizer(corpus, vocab_size=cfg.vocab_size)
        model = build_preset(cfg.model, len(tokenizer), seed=cfg.seed,
                             pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    else:
        model = load_pretrained(cfg.init)
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.init)
        except (OSError, ValueError) as err:
            raise UserError(f"init: no tokenizer found with model '{cfg.init}' ({err})") from None
    check_seq_len(model, cfg.seq_len)
    streams = {s: split_token_ids(corpus, s, tokenizer) for s in ("train", "validation", "test")}
    return model, tokenizer, streams


def measure_auto_lambda(model, teacher, stream, cfg: TrainConfig, batches: int = 4) -> float:
    """lambda = factor x mean |gradient| of the in-scope weights at the starting point.

    CAST's guidance is "lambda of the order of the gradients": the blended moment
    (1-a)m + a*lambda*sign(theta) then hands over from the loss gradient to the decay as a -> 1.
    Measured on throwaway batches of a fixed stream seed (``LAMBDA_PROBE_SEED``): training data
    is untouched and every seed of a cell gets the same lambda (it used to vary by ~15%).
    """
    from castlab.data import PackedStream

    probe = PackedStream(stream, cfg.seq_len, cfg.batch_size, seed=LAMBDA_PROBE_SEED)
    weights = [lin.weight for _, lin in in_scope_linears(model)]
    model.zero_grad(set_to_none=True)
    for _ in range(batches):
        loss = step_loss(model, teacher, probe.next_batch(), cfg)
        (loss / batches).backward()
    mean_abs = torch.cat([w.grad.abs().reshape(-1) for w in weights]).mean().item()
    model.zero_grad(set_to_none=True)
    return cfg.lambda_auto_factor * mean_abs


def step_loss(model, teacher, batch: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy, or KD (eta * KL(teacher||student) + (1-eta) * CE) when a teacher is given."""
    from castlab.sparsity.distill import kd_loss, teacher_logits

    device = next(model.parameters()).device
    batch = batch.to(device, non_blocking=True)  # no-op on the CPU; batches are drawn there
    # whole logits with the last position's label ignored: a logits[:, :-1] slice would copy them
    labels = shifted_labels(batch)
    with autocast_context(cfg.dtype, device):
        logits = model(input_ids=batch).logits
    if teacher is None:
        return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten())
    with autocast_context(cfg.dtype, device):
        t_logits = teacher_logits(teacher, batch)
    return kd_loss(logits, t_logits, labels, eta=cfg.eta, temperature=cfg.kd_temperature).total


# ----------------------------------------------------------------------------------------------
# the run


def run_training(cfg: TrainConfig, run_dir: str | Path, progress: bool = True,
                 stop_after: int | None = None) -> dict | None:
    """Train (or one-shot prune) one run into ``run_dir`` and return its result row.

    ``stop_after`` ends the process's work after that many steps with a checkpoint and no row
    (used to test resume); a later call continues from the checkpoint.
    """
    from castlab import store

    run_dir = Path(run_dir)
    device = resolve_device(cfg.device, "device")  # a GPU asked for but missing: UserError now
    created = store.first_missing(run_dir)
    fresh = not (run_dir / "config.yaml").exists()  # else a sweep's or an interrupted run's
    run_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _init_distributed(device)
    if rank == 0:
        save_yaml(cfg, run_dir / "config.yaml")
        store.mark_running(run_dir)
    started = time.time()
    try:
        row = _run(cfg, run_dir, progress and rank == 0, stop_after, rank, world, started,
                   device)
    except (RunFailed, FloatingPointError) as err:
        row = _failed_row(cfg, str(err), started)
    except UserError:
        if rank == 0:
            store.clear_running(run_dir)
            if fresh:  # a run that failed on a user error leaves no config-only folder behind
                store.remove_unstarted(run_dir, created)
        raise
    except Exception as err:  # a crash fails this run, not the sweep that launched it
        row = _failed_row(cfg, f"{type(err).__name__}: {err}", started)
    if rank == 0:
        if row is not None:
            store.write_row(run_dir, row)
        store.clear_running(run_dir)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return row


def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(distributed_backend(device))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _failed_row(cfg: TrainConfig, reason: str, started: float) -> dict:
    return {"run_id": cfg.run_id(), "sweep": cfg.sweep, "method": cfg.method, "model": cfg.model,
            "seed": cfg.seed, "status": "failed", "reason": reason[:500],
            "wall_seconds": time.time() - started, **_versions()}


def _versions() -> dict:
    import transformers

    return {"castlab_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "git_sha": git_sha(),
            **provenance.columns()}  # threads, CPU ISA, BLAS: what the numbers depend on


def _run(cfg, run_dir, progress, stop_after, rank, world, started, device) -> dict | None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_id = cfg.run_id()  # of the config as given (lambda 'auto' stays 'auto' in the id)
    model, tokenizer, streams = load_data_and_model(cfg)
    model = train_mode(model.to(prepare_device(device)), cfg.dropout)
    ctx = RunContext(cfg, run_dir, model, tokenizer, streams["train"], streams["validation"],
                     streams["test"], device=device, rank=rank, world=world)
    ctx.extras["teacher_eval"] = _teacher_eval(ctx) if cfg.init else None
    ctx.extras["run_id"] = run_id
    if cfg.method in ONESHOT_METHODS:
        return _oneshot(ctx, started)
    return _train(ctx, started, progress, stop_after)


def _oneshot(ctx: RunContext, started: float) -> dict:
    """Magnitude / Wanda / SparseGPT: prune the starting model with calibration data, no training."""
    from castlab.data import PackedStream
    from castlab.sparsity.finalize import finalize
    from castlab.sparsity.oneshot import ONESHOT_PRUNERS

    cfg = ctx.cfg
    calib_stream = PackedStream(ctx.train_tokens, cfg.seq_len, cfg.calib_sequences, seed=cfg.seed)
    calib = calib_stream.next_batch().to(ctx.device)
    t0 = time.time()
    opts = {"damp": cfg.sparsegpt_damp} if cfg.method == "sparsegpt" else {}
    masks = ONESHOT_PRUNERS[cfg.method](ctx.model, calib, n=cfg.nm_n, m=cfg.nm_m, **opts)
    report = finalize(ctx.model, cfg.nm_n, cfg.nm_m, masks=masks)
    ctx.extras["train_seconds"] = time.time() - t0
    ctx.extras["loss_before_prune"] = ctx.extras["teacher_eval"].loss
    ctx.extras["finalize"] = report
    ctx.extras["masks"] = masks
    return _finish(ctx, started, steps=0)


def _train(ctx: RunContext, started: float, progress: bool, stop_after: int | None) -> dict | None:
    from castlab.data import PackedStream

    cfg, model = ctx.cfg, ctx.model
    method = make_method(cfg)
    total = total_steps_for(cfg)
    peak_lr = resolve_lr(cfg)
    teacher = None
    if method.uses_teacher:
        teacher = teacher_copy(model, cfg.dtype, ctx.device)  # bf16 once on CUDA, fp32 on CPU
    ckpt_path = ctx.run_dir / "checkpoint" / "state.pt"
    # read onto the host whatever the run's device (a run checkpointed on a GPU resumes on the
    # CPU and vice versa): load_state_dict copies weights and optimizer state to the device, and
    # the mask life and RNG states are host data; tensors and plain data only
    # (castlab.checkpoint): a shared results folder must not run code
    state = checkpoint.load(ckpt_path, map_location="cpu") if ckpt_path.is_file() else None
    if cfg.lambda_ == "auto" and method.uses_lambda:
        lam = state["lambda"] if state else measure_auto_lambda(model, teacher, ctx.train_tokens, cfg)
        cfg = replace(cfg, lambda_=lam)
        method.cfg = cfg
    optimizer = method.build_optimizer(model, peak_lr, total)
    if ctx.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    # the compiled module shares the parameters; checkpoints, evals and finalize use the plain one
    forward_model = torch.compile(model) if cfg.compile else model
    stream = PackedStream(ctx.train_tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed)
    start_step, train_seconds = 0, 0.0
    if state is not None:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state.get("method", {}))
        stream.load_state_dict(state["stream"])
        checkpoint.set_host_rng_state(state["rng"])
        if "cuda" in state["rng"] and ctx.device.type == "cuda":  # same-device resume only
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), ctx.device)
        start_step, train_seconds, ctx.curve = state["step"], state["train_seconds"], state["curve"]
    ctx.extras.update(peak_lr=peak_lr, lambda_=cfg.lambda_, total_steps=total)
    # TensorBoard (W&B, MLflow when asked) curves; after a resume only the records not yet logged
    tracker = open_trackers(cfg, ctx.run_dir, enabled=ctx.is_main,
                            uses_teacher=teacher is not None, curve=ctx.curve)

    bar = tqdm(total=total, initial=start_step, desc=f"{cfg.method} {cfg.model}", unit="step",
               disable=not progress, dynamic_ncols=True)
    step = start_step
    pending: list[torch.Tensor] = []  # losses of the curve's last records, still on the device
    while step < total:
        t0 = time.perf_counter()
        lr = lr_at(step, total, peak_lr, cfg.lr_schedule, cfg.warmup_frac, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        method.before_forward(step)
        batch = stream.next_batch()
        if ctx.world > 1:  # every rank draws the same global batch and keeps its own rows
            if cfg.batch_size % ctx.world:
                raise UserError(f"batch_size: {cfg.batch_size} is not divisible by the "
                                f"{ctx.world} processes of this torchrun")
            batch = batch[ctx.rank::ctx.world]
        loss = step_loss(forward_model, teacher, batch, cfg)
        loss.backward()
        logged_loss = loss.detach()
        if ctx.world > 1:  # log the global-batch loss, as a single process would
            dist.all_reduce(logged_loss)
            logged_loss = logged_loss / ctx.world
        method.after_backward(step)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len,
                  "train_loss": float("nan"), "lr": lr}
        ctx.curve.append(record)
        pending.append(logged_loss)
        stop_now = stop_after is not None and step - start_step >= stop_after and step < total
        eval_now = step % cfg.eval_every == 0 or step == total
        save_now = bool(cfg.checkpoint_every) and (step % cfg.checkpoint_every == 0 or stop_now)
        if eval_now or save_now or stop_now or len(pending) >= LOSS_SYNC_STEPS:
            _read_losses(ctx.curve, pending)  # waits for the device; RunFailed on a NaN loss
        train_seconds += time.perf_counter() - t0
        if eval_now:
            record["eval_loss"] = _timed_perplexity(ctx, _unwrap(model), ctx.val_tokens, cfg,
                                                    cfg.eval_tokens).loss
            record.update(method.diagnostics())
            # the training loss is the KD objective when a teacher is used; eval is plain CE
            bar.set_postfix({objective_name(teacher is not None): f"{record['train_loss']:.3f}",
                             "val_ce": f"{record['eval_loss']:.3f}"})
            tracker.log(ctx.curve)
        bar.update(1)
        if save_now and ctx.is_main:
            _save_checkpoint(ckpt_path, _unwrap(model), optimizer, stream, step, train_seconds,
                             ctx.curve, cfg, method.state_dict())
        if stop_now:
            bar.close()
            tracker.close()
            return None
    bar.close()
    model = _unwrap(model)
    ctx.extras["train_seconds"] = train_seconds
    if method.sparse:
        ctx.extras["loss_before_prune"] = _final_eval(ctx, model, ctx.val_tokens, cfg).loss
        ctx.extras["diagnostics"] = method.summary()
        method.fill_curve(ctx.curve)
        if method.uses_lambda and ctx.is_main:  # the decay-budget check is about AdamS
            _decay_budget_warning(ctx, method, peak_lr, total)
    ctx.extras["finalize"] = method.finalize(model)
    ctx.cfg = cfg
    row = _finish(ctx, started, steps=total)
    tracker.close(row)
    return row


def _read_losses(curve: list[dict], pending: list[torch.Tensor]) -> None:
    """Copy the device-side losses of the last ``len(pending)`` curve records to the host (one
    sync for all of them) and fail the run at the first non-finite one."""
    if not pending:
        return
    values = torch.stack(pending).tolist()
    records = curve[len(curve) - len(values):]
    pending.clear()
    for record, value in zip(records, values, strict=True):
        record["train_loss"] = value
        if not math.isfinite(value):
            raise RunFailed(f"loss became {value} at step {record['step'] - 1}")


def train_mode(model: torch.nn.Module, dropout: float | None = None) -> torch.nn.Module:
    """The model in train mode (HF checkpoints load in eval mode, dropout silently off), with
    every dropout rate set to ``dropout`` when given, else as the model's own config says."""
    model.train()
    if dropout is None:
        return model
    for name in ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout",
                 "attention_probs_dropout_prob", "hidden_dropout_prob", "resid_pdrop",
                 "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, dropout)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        # HF attention and decoder layers keep their rates as float attributes (F.dropout)
        for attr in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, dropout)
    return model


def _timed_perplexity(ctx: RunContext, model, tokens, cfg: TrainConfig, max_tokens: int | None):
    """``perplexity`` with its seconds added to the run's eval_seconds (the sweep overhead bench)."""
    t0 = time.perf_counter()
    result = perplexity(model, tokens, cfg.seq_len, batch_size=max(1, EVAL_BATCH_TOKENS // cfg.seq_len),
                        dtype=cfg.dtype, max_tokens=max_tokens)
    synchronize(ctx.device)
    ctx.extras["eval_seconds"] = ctx.extras.get("eval_seconds", 0.0) + time.perf_counter() - t0
    return result


def _final_eval(ctx: RunContext, model, tokens, cfg: TrainConfig):
    """The perplexity protocol on a split (or its first final_eval_tokens tokens)."""
    return _timed_perplexity(ctx, model, tokens, cfg, cfg.final_eval_tokens or None)


def _teacher_eval(ctx: RunContext):
    """The starting model's final-protocol eval, cached beside a local starting model.

    Every run of a sweep starts from the same teacher; scoring it once per protocol (seq_len,
    token cap, dtype) instead of once per run keeps sweep overhead down.
    """
    from castlab.evaluate import PerplexityResult

    cfg = ctx.cfg
    cache = Path(cfg.init) / f"castlab_eval_s{cfg.seq_len}_t{cfg.final_eval_tokens}_{cfg.dtype}.json"
    if cache.is_file():
        return PerplexityResult(**json.loads(cache.read_text()))
    result = _final_eval(ctx, ctx.model, ctx.val_tokens, cfg)
    if Path(cfg.init).is_dir():
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.as_dict()))
        os.replace(tmp, cache)
    return result


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _save_checkpoint(path, model, optimizer, stream, step, train_seconds, curve, cfg,
                     method_state: dict) -> None:
    """One dict, written atomically: model, optimizer, method (mask life), data position, RNG,
    step, curve."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = checkpoint.host_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":  # dropout on a GPU draws from the card's generator
        rng["cuda"] = torch.cuda.get_rng_state(device)
    checkpoint.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "stream": stream.state_dict(), "step": step, "train_seconds": train_seconds,
        "curve": curve, "lambda": cfg.lambda_, "rng": rng, "method": method_state,
    }, path)


def _decay_budget_warning(ctx: RunContext, method, peak_lr: float, total: int) -> None:
    """Warn when the distance the masked weights were measured to move towards zero
    (sum_t lr_t * masked step / lr) is below their typical |theta| at the start."""
    from castlab.sparsity.decay import decay_budget_warning
    from castlab.sparsity.masklife import measured_decay_distance

    cfg = ctx.cfg
    schedule = [lr_at(t, total, peak_lr, cfg.lr_schedule, cfg.warmup_frac, cfg.min_lr_ratio)
                for t in range(total)]
    distance = measured_decay_distance(schedule, method.life.step_samples)
    message = decay_budget_warning(distance, method.life.typical_masked, total)
    # the masked weights ended at zero whatever the sampled steps say: weights a decoupled decay
    # (masked_decay_ratio) has thresholded to zero stop moving, so the distance under-measures it
    ended = ctx.extras.get("diagnostics", {}).get("masked_kept_ratio", float("nan"))
    if message and ended < DECAY_DONE_RATIO:
        message = None
    ctx.extras["decay_budget_warning"] = message
    if message:
        tqdm.write(f"castlab train: warning: {message}")


def _finish(ctx: RunContext, started: float, steps: int) -> dict:
    """Final evals, save the model, and build the result row (the caller writes it last)."""
    from castlab import store
    from castlab.sparsity.masks import nm_violations

    cfg, model, extras = ctx.cfg, ctx.model, ctx.extras
    report = extras.get("finalize")
    final = _final_eval(ctx, model, ctx.val_tokens, cfg)
    test = _final_eval(ctx, model, ctx.test_tokens, cfg)
    if not math.isfinite(final.loss):
        raise RunFailed(f"final eval loss is {final.loss}")
    if ctx.is_main:
        _save_model(ctx, report)
        if ctx.curve:
            store.write_curve(ctx.run_dir, ctx.curve)
    counts = count_parameters(model)
    zeroshot = {}
    if cfg.zeroshot_tasks:
        from castlab.downstream.zeroshot import evaluate_zeroshot, row_columns

        zeroshot = row_columns(evaluate_zeroshot(model, ctx.tokenizer, cfg.zeroshot_tasks,
                                                 limit=cfg.zeroshot_limit or None))
    teacher_eval = extras.get("teacher_eval")
    sparse = report is not None
    before = extras.get("loss_before_prune", final.loss if not sparse else float("nan"))
    diagnostics = extras.get("diagnostics", {})
    tokens = steps * cfg.batch_size * cfg.seq_len
    train_seconds = extras.get("train_seconds", 0.0)
    return {
        "run_id": extras["run_id"], "sweep": cfg.sweep, "method": cfg.method, "model": cfg.model,
        "init": cfg.init or "",
        "params_total": counts.total, "params_non_embedding": counts.non_embedding,
        "params_in_scope": counts.in_scope, "params_nonzero": counts.nonzero_in_scope,
        "sparsity": 1 - cfg.nm_n / cfg.nm_m if sparse else 0.0,
        "nm_n": cfg.nm_n if sparse else 0, "nm_m": cfg.nm_m if sparse else 0,
        "tokens": tokens, "tokens_per_param": tokens / counts.non_embedding,
        "steps": steps, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
        "lr": extras.get("peak_lr", float("nan")), "schedule": cfg.lr_schedule,
        "lambda_": float(extras.get("lambda_", float("nan"))) if extras.get("lambda_") != "auto"
        else float("nan"),
        "eta": cfg.eta, "kd_temperature": cfg.kd_temperature, "t1": cfg.t1,
        "scale_blocks": cfg.scale_blocks, "seed": cfg.seed, "dtype": cfg.dtype,
        "teacher_eval_loss": teacher_eval.loss if teacher_eval else float("nan"),
        "teacher_ppl": teacher_eval.ppl if teacher_eval else float("nan"),
        "eval_loss": final.loss, "ppl": final.ppl, "eval_tokens": final.tokens,
        "test_loss": test.loss, "test_ppl": test.ppl,
        "loss_before_prune": before,
        "prune_shock": final.loss - before if sparse else 0.0,
        "exact_nm": bool(sparse) and not nm_violations(model, cfg.nm_n, cfg.nm_m),
        "masked_kept_ratio": diagnostics.get("masked_kept_ratio",
                                             getattr(report, "masked_kept_ratio", float("nan"))),
        **{k: diagnostics.get(k, float("nan")) for k in MASK_LIFE_COLUMNS},
        "decay_budget_warning": extras.get("decay_budget_warning") or "",
        "wall_seconds": time.time() - started, "train_seconds": train_seconds,
        "eval_seconds": extras.get("eval_seconds", 0.0),
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 else float("nan"),
        "status": "ok", "reason": "", **_versions(), **device_columns(ctx.device), **zeroshot,
    }


def _save_model(ctx: RunContext, report) -> None:
    """save_pretrained + tokenizer (+ bit-packed mask file for sparse models)."""
    out = ctx.run_dir / "model"
    if report is None:
        ctx.model.save_pretrained(out)
        ctx.tokenizer.save_pretrained(out)
        return
    from castlab.sparsity.finalize import save_finalized

    save_finalized(ctx.model, ctx.tokenizer, out, getattr(report, "masks", None)
                   or ctx.extras.get("masks"), ctx.cfg.nm_n, ctx.cfg.nm_m)

