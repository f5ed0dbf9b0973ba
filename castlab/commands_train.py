"""`castlab train` and `castlab eval-ppl`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from castlab.argtypes import add_device_argument, positive_int
from castlab.config import METHODS, TrainConfig, from_dict, load_yaml, to_dict
from castlab.errors import UserError
from castlab.paths import check_output_dir

# flag -> TrainConfig field, for the settings people change most; --set covers the rest.
TRAIN_FLAGS = {
    "method": str, "model": str, "init": str, "tokens": str, "corpus": str, "vocab_size": int,
    "seq_len": int, "batch_size": int, "lr": float, "lr_schedule": str, "lambda_": str,
    "eta": float, "kd_temperature": float, "t1": int, "scale_blocks": int, "seed": int,
    "grad_clip": float, "dtype": str, "eval_every": int, "checkpoint_every": int, "threads": int,
    "device": str, "dropout": float,
}


def register(subparsers) -> None:
    """Add the train and eval-ppl subcommands."""
    p = subparsers.add_parser(
        "train", help="train one run (dense pretraining, CAST, baselines) into a run directory",
        description="Train or one-shot prune one model and write a run directory: config.yaml, "
                    "curve.parquet, model/ and result.parquet (last). Resumes from its checkpoint.")
    p.add_argument("--config", type=Path, help="a TrainConfig YAML (flags override its fields)")
    p.add_argument("--out", type=Path, help="run directory (default: results/<run_id>)")
    for name, typ in TRAIN_FLAGS.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        extra = {"choices": METHODS} if name == "method" else {}
        p.add_argument(flag, dest=name, type=typ, default=None, **extra,
                       help=f"TrainConfig.{name}" + (" (a number or 'auto')" if name == "lambda_" else ""))
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="TrainConfig.compile: torch.compile the model for training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field (YAML value), e.g. --set warmup_frac=0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval-ppl", help="perplexity of a model on a corpus split (non-overlapping windows)",
        description="PPL = exp(mean NLL over every shifted position of non-overlapping seq_len "
                    "windows of the joined split; printed with seq_len, dtype and scored tokens.")
    e.add_argument("model", help="model directory (save_pretrained output) or HF name")
    e.add_argument("--corpus", default="default",
                   help="corpus spec: default, a local dir/glob, or hf:NAME/CONFIG (default: default)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--seq-len", type=positive_int, default=128)
    e.add_argument("--batch-size", type=positive_int, default=8)
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    e.add_argument("--max-tokens", type=positive_int, default=None,
                   help="score only this prefix (a positive number of tokens)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a sentence")
    add_device_argument(e)
    e.set_defaults(func=run_eval_ppl)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge --config YAML, explicit flags and --set KEY=VALUE into a validated TrainConfig."""
    import yaml

    data = to_dict(load_yaml(TrainConfig, args.config)) if args.config else {}
    for name in [*TRAIN_FLAGS, "compile"]:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = _number_or_text(value) if name == "lambda_" else value
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set: got '{item}', allowed KEY=VALUE")
        try:
            data[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {key.strip()}: cannot read {raw[:60]!r} as a YAML value") from None
    if "method" not in data or "model" not in data:
        raise UserError("train: --method and --model are required (or a --config that sets them)")
    return from_dict(TrainConfig, data, where="train")


def _number_or_text(value: str) -> float | str:
    """'0.05' -> 0.05, 'auto' -> 'auto' (validation then names what is allowed)."""
    try:
        return float(value)
    except ValueError:
        return value


def run_train(args: argparse.Namespace) -> int:
    """castlab train: one run into a directory; prints its summary line."""
    from transformers.utils import logging as hf_logging

    from castlab.train import run_training

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards": noise here
    cfg = config_from_args(args)
    out = check_output_dir(args.out or Path("results") / cfg.run_id(), "--out")
    row = run_training(cfg, out, progress=not args.no_progress)
    if row is None:
        return 0
    if row["status"] != "ok":
        print(f"run {row['run_id']} failed: {row['reason']}")
        return 1
    print(f"run {row['run_id']} ({row['method']}, {row['model']}): validation PPL {row['ppl']:.3f} "
          f"(loss {row['eval_loss']:.4f}; {row['eval_tokens']:,} tokens, seq_len {row['seq_len']}, "
          f"{row['dtype']}) after {row['tokens']:,} training tokens; "
          f"{row['tokens_per_second']:.0f} tokens/s; saved in {out}")
    return 0


def run_eval_ppl(args: argparse.Namespace) -> int:
    """castlab eval-ppl: perplexity protocol on a corpus split."""
    from transformers import AutoTokenizer

    from castlab.data import load_corpus, split_token_ids
    from castlab.device import use_device
    from castlab.evaluate import perplexity
    from castlab.models import load_pretrained

    device = use_device(args.device)
    model = load_pretrained(args.model).to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError):
        raise UserError(f"model '{args.model}': no tokenizer saved with it") from None
    corpus = load_corpus(args.corpus)
    tokens = split_token_ids(corpus, args.split, tokenizer)
    result = perplexity(model, tokens, args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
                        max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({"model": args.model, "corpus": args.corpus, "split": args.split,
                          **result.as_dict()}))
    else:
        print(f"{args.model} on {args.corpus}/{args.split}: {result.describe()}")
    return 0
