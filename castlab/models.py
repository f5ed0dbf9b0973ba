"""Model ladder presets (OPT architecture, laptop scale), HF loading, parameter counts, scope.

"In scope" (sparsified) means the weight of every ``nn.Linear`` inside the transformer blocks;
embeddings, the LM head, norms and biases stay dense (CAST_SPEC.md, Scope).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from castlab.errors import UserError


@dataclass(frozen=True)
class LadderPreset:
    """One rung of the embedded OPT ladder; vocab comes from the tokenizer at build time."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int = 512


# Names carry the rounded count of in-scope (block Linear) weights, the "N" of the sparse law.
PRESETS: dict[str, LadderPreset] = {
    "opt-tiny": LadderPreset(hidden=32, layers=1, heads=2, ffn=64, max_positions=256),  # tests
    "opt-100k": LadderPreset(hidden=64, layers=2, heads=2, ffn=256),
    "opt-330k": LadderPreset(hidden=96, layers=3, heads=3, ffn=384),
    "opt-600k": LadderPreset(hidden=128, layers=3, heads=4, ffn=512),
    "opt-1.3m": LadderPreset(hidden=192, layers=3, heads=6, ffn=768),
    "opt-3m": LadderPreset(hidden=256, layers=4, heads=8, ffn=1024),
    # GPU study rungs (sweeps/opt_family_gpu.yaml): with opt-1.3m and opt-3m, 8x in N
    "opt-6m": LadderPreset(hidden=320, layers=5, heads=5, ffn=1280),
    "opt-12m": LadderPreset(hidden=384, layers=7, heads=6, ffn=1536),
}

# Block-internal linears: OPT/LLaMA/Mistral/Qwen (model.*.layers.<i>.…) and GPT-NeoX style (….h.<i>.…).
_BLOCK_PATTERN = re.compile(r"(^|\.)(layers|h|blocks)\.\d+\.")


def is_preset(spec: str) -> bool:
    """True if ``spec`` names a ladder preset."""
    return spec in PRESETS


def opt_config_for(preset: str, vocab_size: int, pad_token_id: int = 1, bos_token_id: int = 2,
                   eos_token_id: int = 2):
    """An ``OPTConfig`` for a ladder preset at the given vocabulary size."""
    from transformers import OPTConfig

    if preset not in PRESETS:
        raise UserError(f"unknown model preset '{preset}': allowed {', '.join(PRESETS)}")
    p = PRESETS[preset]
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        ffn_dim=p.ffn,
        max_position_embeddings=p.max_positions,
        word_embed_proj_dim=p.hidden,
        do_layer_norm_before=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )


def build_preset(preset: str, vocab_size: int, seed: int = 0, **token_ids) -> nn.Module:
    """A freshly initialised ladder model (deterministic for a seed), fp32."""
    from transformers import OPTForCausalLM

    config = opt_config_for(preset, vocab_size, **token_ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OPTForCausalLM(config)
    return model.float()


def load_pretrained(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load any HF causal LM by hub name or local directory (``save_pretrained`` output)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"cannot load model '{name_or_path}': the folder holds no config.json, "
                        "allowed a save_pretrained directory, a ladder preset or an HF name")
    try:
        return AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except SafetensorError as err:  # a damaged or truncated weights file
        raise UserError(f"cannot load model '{name_or_path}': its weights file is damaged "
                        f"({str(err).strip().splitlines()[0][:200]})") from None
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load model '{name_or_path}': not a ladder preset ({', '.join(PRESETS)}), "
            f"not a local model directory, and not loadable from the hub ({first})"
        ) from None


def in_scope_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The sparsifiable layers: every nn.Linear inside a transformer block, in model order."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _BLOCK_PATTERN.search(name)
    ]
    if not found:
        raise UserError(
            f"model {type(model).__name__} has no nn.Linear inside transformer blocks "
            "(expected modules named like '...layers.<i>...')"
        )
    return found


def _embedding_parameters(model: nn.Module) -> set[int]:
    """ids of token/position embedding tables and an untied LM head."""
    ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.add(id(module.weight))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        ids.add(id(head.weight))
    return ids


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts under the conventions scaling-law papers use."""

    total: int  # every unique parameter (tied weights once)
    non_embedding: int  # total minus token/position embeddings and LM head (Kaplan et al.)
    in_scope: int  # weights of block-internal Linears: what 2:4 sparsifies
    nonzero_in_scope: int  # non-zero entries among those (half of in_scope after 2:4 finalize)

    def as_dict(self) -> dict[str, int]:
        """Plain dict, for result rows."""
        return asdict(self)


def count_parameters(model: nn.Module) -> ParamCounts:
    """Count parameters of ``model`` three ways plus the non-zero in-scope count."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = sum(unique[i].numel() for i in _embedding_parameters(model) if i in unique)
    weights = [m.weight for _, m in in_scope_linears(model)]
    return ParamCounts(
        total=total,
        non_embedding=total - embedding,
        in_scope=sum(w.numel() for w in weights),
        nonzero_in_scope=int(sum(int(torch.count_nonzero(w.detach())) for w in weights)),
    )


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model accepts, from its config (None if the config does not say)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None
