"""Where a policy's in-pass value (and entropy) ride out of vLLM: reserved vocabulary slots.

The fused head writes `value - 1000` into slot A, `-1000` into slot B and `entropy - 1000` into slot C, so all
three have zero probability (never sampled) while `logprob_token_ids=[A, B, C]` returns their log-probabilities:
`value = lp[A] - lp[B]` and `entropy = lp[C] - lp[B]` exactly (the softmax normaliser cancels). README.md,
"Rewards", tells the whole path.

Slots come from the model directory, read the same way by the gateway and by vLLM's engine process (plain JSON
and safetensors-header reads: cheap enough for the engine's start-up). A directory has slots when it has a value
head in any layout (`kernels.layout.find_value_head`: aligngate's `value_head/` file, TRL's `v_head.summary.*` or
OpenRLHF's `value_head.weight` inside the weights, or `config.json` `aligngate.value_head`). The rule, first match:

1. `config.json` -> `"aligngate": {"value_slots": {"a": int, "b": int, "c": int | null}}`: taken as given.
2. the tokenizer has `<|value_a|>` / `<|value_b|>` (aligngate's own tiny tokenizer): A and B are those, C the
   first padded vocabulary row (or none).
3. otherwise rows the tokenizer never produces, in this order, A then B then C:
   a. padded rows of the config's vocabulary beyond every tokenizer id (Qwen: 151665 tokens, 151936 rows;
      Phi-3: 32011 tokens, 32064 rows), lowest first;
   b. reserved / unused special tokens, highest id first (the last ones: teams repurpose the first ones, e.g.
      Llama-3.1's pad): Llama-3 `<|reserved_special_token_N|>`, Gemma `<unusedN>`, Mistral `[control_N]`,
      Phi-3 `<|placeholderN|>`. Message contents are tokenized with `split_special_tokens`, so no user text
      produces them; their logits are overwritten by the head, so whatever the model learnt there is unused.
   Fewer than two such rows: an error that says to set `config.json` `aligngate.value_slots`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kernels.layout import find_value_head

OFFSET = 1000.0
VALUE_A, VALUE_B = "<|value_a|>", "<|value_b|>"
RESERVED = re.compile(r"<\|reserved_special_token_\d+\|>|<unused\d+>|\[control_\d+\]|<\|placeholder\d+\|>")


@dataclass(frozen=True)
class ValueSlots:
    a: int
    b: int
    c: int | None  # entropy slot; None when the vocabulary has no free row

    def ids(self) -> list[int]:
        return [self.a, self.b] + ([self.c] if self.c is not None else [])


def has_value_head(model_dir: str | Path, cfg: dict | None = None) -> bool:
    d = Path(model_dir)
    if cfg is None:
        cfg = json.loads((d / "config.json").read_text())
    return bool((cfg.get("aligngate") or {}).get("value_head")) or find_value_head(d) is not None


def read_value_slots(model_dir: str | Path) -> ValueSlots | None:
    """The slots of a model with a value head, or None when the directory has no value head."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    ag = cfg.get("aligngate") or {}
    if not has_value_head(d, cfg):
        return None
    if "value_slots" in ag:
        s = ag["value_slots"]
        return ValueSlots(int(s["a"]), int(s["b"]), None if s.get("c") is None else int(s["c"]))
    tok_path = d / "tokenizer.json"
    if not tok_path.exists():
        raise ValueError(f"{d}: a value head needs reserved vocabulary slots and there is no tokenizer.json to "
                         "find free rows in; set config.json aligngate.value_slots {\"a\": id, \"b\": id, \"c\": id}")
    tok = json.loads(tok_path.read_text())
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    used = max([*tok.get("model", {}).get("vocab", {}).values(), *added.values()]) + 1
    vocab = int(cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 0)
    if VALUE_A in added and VALUE_B in added:  # aligngate's own tokenizer
        return ValueSlots(added[VALUE_A], added[VALUE_B], used if used < vocab else None)
    special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    reserved = sorted((i for c, i in added.items() if i in special and i < vocab and RESERVED.fullmatch(c)),
                      reverse=True)
    pool = list(range(used, vocab))[:3] + reserved[:3]
    if len(pool) < 2:
        raise ValueError(
            f"{d}: a value head needs two or three vocabulary rows the tokenizer never produces, and this checkpoint "
            f"has no padded rows (config vocab_size {vocab}, tokenizer {used}) and no reserved/unused special "
            "tokens; set config.json aligngate.value_slots {\"a\": id, \"b\": id, \"c\": id} to ids the model "
            "never needs to generate")
    return ValueSlots(pool[0], pool[1], pool[2] if len(pool) > 2 else None)
