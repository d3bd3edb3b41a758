"""A random-weight policy whose decode step on these CPUs costs about what a real policy's step costs on a T4.

The tiny default policy decodes a step in ~1.5 ms here, so any fixed per-step cost (the in-pass value read-out
adds one: vLLM's logprob gather, transfer and bookkeeping for the value slots) shows up as a large ratio that a
real deployment never sees: a 0.5B-class fp16 policy on a T4 takes ~15-30 ms per batched decode step. This
builds a Llama of that step cost (default: hidden 1024, 8 layers, ~100M parameters, the default tokenizer and
chat template, a random TRL-layout value head), so `reward` can be measured where the ratio means something:

    python -m benchmarks.step_model --out .cache/step-model
    python -m benchmarks reward --model .cache/step-model --rates 4 8 --num-prompts 80

Random weights are fine: the benchmarks use `ignore_eos` and fixed lengths, so only the step cost matters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build(out: Path, hidden: int = 1024, layers: int = 8, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from kernels.value_head import ValueHead, save_value_head
    from training.tiny import TinySize, llama_config, save_policy

    if (out / "config.json").exists():
        return out
    size = TinySize(hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                    num_attention_heads=hidden // 64, max_position_embeddings=2048)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(size))
    save_policy(model, out)
    save_value_head(ValueHead(hidden), out)
    params = sum(p.numel() for p in model.parameters())
    (out / "aligngate_build.json").write_text(json.dumps({"size": "step-model", "seed": seed, "params": params,
                                                          "hidden_size": hidden, "layers": layers}))
    print(f"step model: {params / 1e6:.1f}M parameters -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model directory to write (kept if it exists)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size (a multiple of 64)")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    args = p.parse_args(argv)
    build(args.out, args.hidden, args.layers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
