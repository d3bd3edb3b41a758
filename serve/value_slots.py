"""Where a policy's in-pass value (and entropy) ride out of vLLM: reserved vocabulary slots.

The fused head writes `value - 1000` into slot A, `-1000` into slot B and `entropy - 1000` into slot C, so all
three have zero probability (never sampled) while `logprob_token_ids=[A, B, C]` returns their log-probabilities:
`value = lp[A] - lp[B]` and `entropy = lp[C] - lp[B]` exactly (the softmax normaliser cancels). See
../shared/DESIGN.md, "The in-pass value".

Slots come from the model directory, read the same way by the gateway and by vLLM's engine process:
`config.json` -> `"aligngate": {"value_slots": {"a": int, "b": int, "c": int}}` when given; otherwise the
tokenizer's `<|value_a|>` / `<|value_b|>` special tokens, and for C the first padded vocabulary row the tokenizer
never produces. Plain JSON reads: cheap enough for the engine's start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kernels.layout import VALUE_HEAD_FILE

OFFSET = 1000.0
VALUE_A, VALUE_B = "<|value_a|>", "<|value_b|>"


@dataclass(frozen=True)
class ValueSlots:
    a: int
    b: int
    c: int | None  # entropy slot; None when the vocabulary has no free row

    def ids(self) -> list[int]:
        return [self.a, self.b] + ([self.c] if self.c is not None else [])


def read_value_slots(model_dir: str | Path) -> ValueSlots | None:
    """The slots of a model with a value head, or None when the directory has no value head."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    ag = cfg.get("aligngate") or {}
    if not ag.get("value_head") and not (d / VALUE_HEAD_FILE).exists():
        return None
    if "value_slots" in ag:
        s = ag["value_slots"]
        return ValueSlots(int(s["a"]), int(s["b"]), None if s.get("c") is None else int(s["c"]))
    tok_path = d / "tokenizer.json"
    if not tok_path.exists():
        raise ValueError(f"{d}: a value head needs reserved slots: set config.json aligngate.value_slots")
    tok = json.loads(tok_path.read_text())
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    if VALUE_A not in added or VALUE_B not in added:
        raise ValueError(f"{d}: tokenizer lacks {VALUE_A}/{VALUE_B}; set config.json aligngate.value_slots")
    used = max([*tok.get("model", {}).get("vocab", {}).values(), *added.values()]) + 1
    vocab = int(cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 0)
    return ValueSlots(added[VALUE_A], added[VALUE_B], used if used < vocab else None)
