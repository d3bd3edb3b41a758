"""Prompt/response <-> token ids, and sampling, for the two kinds of policy the stages train.

- `ByteCodec`: the default tiny policies (byte-level tokenizer, fixed chat format; training/common.py) — the code
  paths the default task was tuned on, unchanged.
- `TemplateCodec`: a `--base` checkpoint: the base's own tokenizer and chat template (what trl applies when it
  trains and what vLLM applies when it serves), sampling with `generate`.

Both answer the same questions (PPO, value-head fitting, evaluation and reward-model scoring use only these):
`prompt_ids(prompt)`, `sequence_ids(prompt, response)` (the whole chat, as trl's RewardTrainer tokenizes a
conversational pair), `sample(model, prompts) -> (texts, response ids ending at the stop token)`, `allowed(V)`
(rows a policy may emit: never the value slots or untrained padded rows) and `pad_id`.
A prompt is a string or a list of chat messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import torch

from training import common as C
from training.formats import prompt_text

Prompt = str | list[dict]


class Codec(Protocol):
    pad_id: int

    def prompt_ids(self, prompt: Prompt) -> list[int]: ...

    def sequence_ids(self, prompt: Prompt, response: str) -> list[int]: ...

    def sample(self, model, prompts: Sequence[Prompt], *, temperature: float = 1.0, max_new_tokens: int = 24,
               seed: int | None = None, greedy: bool = False) -> tuple[list[str], list[list[int]]]: ...

    def allowed(self, vocab_size: int) -> torch.Tensor: ...


class ByteCodec:
    pad_id = C.PAD

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return C.prompt_ids(prompt_text(prompt))

    def sequence_ids(self, prompt: Prompt, response: str) -> list[int]:
        return C.prompt_ids(prompt_text(prompt)) + C.response_ids(response)

    def sample(self, model, prompts, *, temperature=1.0, max_new_tokens=C.MAX_NEW_TOKENS, seed=None, greedy=False):
        return C.sample_responses(model, [prompt_text(p) for p in prompts], temperature=temperature,
                                  max_new_tokens=max_new_tokens, seed=seed, greedy=greedy, return_ids=True)

    def allowed(self, vocab_size: int) -> torch.Tensor:
        return C.allowed_token_mask(vocab_size)


def _messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class TemplateCodec:
    """The base's tokenizer and chat template."""

    def __init__(self, tok, stop_ids: Sequence[int] | None = None):
        self.tok = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.stop_ids = list(stop_ids) if stop_ids else [tok.eos_token_id]
        slots = [tok.convert_tokens_to_ids(t) for t in ("<|value_a|>", "<|value_b|>")]
        self.never = [i for i in slots if isinstance(i, int) and i != tok.unk_token_id and i >= 0]

    @classmethod
    def from_dir(cls, path: str | Path) -> "TemplateCodec":
        from transformers import GenerationConfig

        from training.base import load_tokenizer

        tok = load_tokenizer(path)
        stop: list[int] = []
        try:
            eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
            stop = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        except OSError:
            pass
        return cls(tok, stop or None)

    def _ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        r = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                         add_generation_prompt=add_generation_prompt)
        return list(r["input_ids"])

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return self._ids(_messages(prompt), True)

    def sequence_ids(self, prompt: Prompt, response: str) -> list[int]:
        return self._ids(_messages(prompt) + [{"role": "assistant", "content": response}], False)

    def allowed(self, vocab_size: int) -> torch.Tensor:
        m = torch.zeros(vocab_size, dtype=torch.bool)
        m[: min(len(self.tok), vocab_size)] = True  # rows past the tokenizer are padding: never trained, never emitted
        if self.never:
            m[torch.as_tensor(self.never)] = False
        return m

    @torch.no_grad()
    def sample(self, model, prompts, *, temperature=1.0, max_new_tokens=64, seed=None, greedy=False, batch_size=32):
        from transformers import LogitsProcessor, LogitsProcessorList

        allowed = self.allowed(model.config.get_text_config().vocab_size)

        class Mask(LogitsProcessor):
            def __call__(self, input_ids, scores):
                return scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))

        model.eval()
        texts: list[str] = []
        out_ids: list[list[int]] = []
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            for s in range(0, len(prompts), batch_size):
                chunk = [self.prompt_ids(p) for p in prompts[s:s + batch_size]]
                T = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
                att = torch.zeros((len(chunk), T), dtype=torch.long)
                for i, c in enumerate(chunk):  # left padding: generation continues every row at the same column
                    ids[i, T - len(c):] = torch.as_tensor(c)
                    att[i, T - len(c):] = 1
                gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                     do_sample=not greedy, temperature=temperature if not greedy else None,
                                     top_k=None, top_p=None, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                                     logits_processor=LogitsProcessorList([Mask()]))
                for row in gen[:, T:].tolist():
                    r: list[int] = []
                    for t in row:
                        r.append(t)
                        if t in self.stop_ids:
                            break
                    out_ids.append(r)
                    texts.append(self.tok.decode(r, skip_special_tokens=True))
        return texts, out_ids


def codec_for(policy_dir: str | Path) -> Codec:
    """TemplateCodec for a --base lineage (aligngate_base.json present), else the default ByteCodec."""
    from training.base import is_template_dir

    return TemplateCodec.from_dir(policy_dir) if is_template_dir(policy_dir) else ByteCodec()


def load_any_policy(policy_dir: str | Path):
    """The causal LM at `policy_dir`, whichever kind it is."""
    from training.base import is_template_dir, load_causal_lm

    return load_causal_lm(policy_dir) if is_template_dir(policy_dir) else C.load_policy(policy_dir)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s))
        att[i, : len(s)] = 1
    return ids, att


def rollout_batch(codec: Codec, prompts: Sequence[Prompt], rids: Sequence[Sequence[int]]):
    """(input_ids, attention_mask, response_mask) right-padded for prompt + sampled response ids."""
    seqs, rm = [], []
    for p, r in zip(prompts, rids):
        pi = codec.prompt_ids(p)
        seqs.append(pi + list(r))
        rm.append([0] * len(pi) + [1] * len(r))
    ids, att = pad_right(seqs, codec.pad_id)
    rmask = torch.zeros(ids.shape, dtype=torch.float32)
    for i, m in enumerate(rm):
        rmask[i, : len(m)] = torch.as_tensor(m, dtype=torch.float32)
    return ids, att, rmask
