"""The reward of an answer, from the policy's own forward pass (request path stage: engine -> reward -> monitor).

Which position: by default (`position="last"`) the reward is the in-pass value at the final generated position,
i.e. V(prompt + response minus its last token) — when the answer ends with end-of-turn, that is the state after
the whole visible response, the one that chose to stop. It costs nothing: vLLM returned it with the last token.
`position="eos"` is OpenRLHF's "reward at EOS": one extra 1-token step over prompt + response (+ EOS), reading
V at the EOS position; cheap with prefix caching, and used anyway when the client asked for logprobs (vLLM then
returns the client's logprobs, not the value slots). Either way the reward is attached after the last token:
it never delays time to first token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from serve.engines.engine import Delta, Engine

Position = Literal["last", "eos"]


@dataclass
class ChoiceTrace:
    """What one choice's deltas tell about its reward, accumulated as they stream by (O(1) per token)."""

    last_value: float | None = None
    entropy_sum: float = 0.0
    entropy_n: int = 0
    token_ids: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class RewardTracker:
    """Per request: each choice's last value, mean entropy, text, and (when needed) token ids and all values."""

    def __init__(self, n: int, keep_tokens: bool, keep_values: bool = False):
        self.choices = [ChoiceTrace() for _ in range(n)]
        self.keep_tokens = keep_tokens or keep_values
        self.keep_values = keep_values

    def add(self, d: Delta) -> None:
        c = self.choices[d.index]
        c.text.append(d.text)
        if d.values:
            c.last_value = d.values[-1]
            if self.keep_values:
                c.values.extend(d.values)
        if d.entropies:
            c.entropy_sum += sum(d.entropies)
            c.entropy_n += len(d.entropies)
        if self.keep_tokens and d.token_ids:
            c.token_ids.extend(d.token_ids)

    def response_text(self, i: int) -> str:
        return "".join(self.choices[i].text)

    def traces(self) -> list[dict]:
        """Per-token values and token ids (the `return_values` extension)."""
        return [{"token_ids": c.token_ids, "values": c.values, "mean_entropy": self.mean_entropy(i)}
                for i, c in enumerate(self.choices)]

    def mean_entropy(self, i: int) -> float | None:
        c = self.choices[i]
        return c.entropy_sum / c.entropy_n if c.entropy_n else None


@dataclass
class Reward:
    score: float
    source: str  # "value_head" (in-pass, last position) | "value_head_eos" (finalize step) | "audit_model" (a
    # version without a value head, scored by the audit reward model after the answer: serve/api/completions.py)
    model_version: str
    cached: bool = False

    def as_dict(self) -> dict:
        return {"score": self.score, "source": self.source, "model_version": self.model_version, "cached": self.cached}


def needs_finalize(engine: Engine, position: Position, client_logprobs: bool) -> bool:
    return engine.has_value_head and (position == "eos" or client_logprobs)


async def rewards(engine: Engine, tracker: RewardTracker, prompt_ids: list[int] | None, position: Position,
                  client_logprobs: bool, cache=None, prompt_text: str = "") -> list[Reward | None]:
    """One reward per choice (None where the version has no value head).

    Finalize-step rewards go through the reward cache (`serve.rewards.cache.RewardCache`, keyed by version + position,
    normalised prompt and response): a repeated answer is not scored twice, on this replica or another.
    """
    if not engine.has_value_head:
        return [None] * len(tracker.choices)
    out: list[Reward | None] = []
    for i, c in enumerate(tracker.choices):
        if needs_finalize(engine, position, client_logprobs) and prompt_ids is not None:
            out.append(await _finalize(engine, c, prompt_ids, cache, prompt_text, tracker.response_text(i)))
        elif c.last_value is not None:
            out.append(Reward(c.last_value, "value_head", engine.name))
        else:
            out.append(None)
    return out


async def _finalize(engine: Engine, c: ChoiceTrace, prompt_ids: list[int], cache, prompt_text: str,
                    response_text: str) -> Reward | None:
    async def compute() -> float:
        scored = await engine.score(prompt_ids, c.token_ids)
        if scored is None:
            raise LookupError("no value for this answer")
        return scored[0]

    try:
        if cache is None:
            return Reward(await compute(), "value_head_eos", engine.name)
        hit = await cache.get_or_compute(f"{engine.name}@eos", prompt_text, response_text, compute)
        return Reward(hit.score, "value_head_eos", engine.name, hit.cached)
    except LookupError:
        return None
