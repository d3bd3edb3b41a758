"""Shared plumbing for the training stages: chat encoding, batching, sampling, log-probs, JSON, curves, hashes.

The default tokenizer is byte-level (training/tokenizer.py), so encoding here is a table look-up: a chat turn is

    <|bos|><|user|>{prompt}<|end|><|assistant|>{response}<|end|>

exactly what the chat template in the exported tokenizer produces (tests check both agree).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from training import tiny
from training import tokenizer as tk

IDS = tiny.token_ids()
PAD, BOS, EOS = IDS["pad"], IDS["bos"], IDS["eos"]
USER = tk.SPECIAL_TOKENS.index(tk.USER)
ASSISTANT = tk.SPECIAL_TOKENS.index(tk.ASSISTANT)
N_SPECIAL = len(tk.SPECIAL_TOKENS)
MAX_NEW_TOKENS = 24


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (what tokenizers' ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = _bytes_to_unicode()
_SORTED = sorted(_B2U.values())
BYTE_ID = np.array([N_SPECIAL + _SORTED.index(_B2U[b]) for b in range(256)], dtype=np.int64)
ID_BYTE = {int(i): b for b, i in enumerate(BYTE_ID)}


def encode_text(text: str) -> list[int]:
    return BYTE_ID[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)].tolist()


def decode_ids(ids: Iterable[int]) -> str:
    """Bytes up to the first end-of-turn; special tokens other than EOS are dropped."""
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i in ID_BYTE:
            out.append(ID_BYTE[i])
    return out.decode("utf-8", errors="replace")


def prompt_ids(prompt: str) -> list[int]:
    return [BOS, USER] + encode_text(prompt) + [EOS, ASSISTANT]


def response_ids(response: str) -> list[int]:
    return encode_text(response) + [EOS]


def allowed_token_mask(vocab_size: int) -> torch.Tensor:
    """True for tokens a policy may emit: the 256 bytes and end-of-turn (never roles, pad, value slots)."""
    m = torch.zeros(vocab_size, dtype=torch.bool)
    m[torch.as_tensor(BYTE_ID)] = True
    m[EOS] = True
    return m


def configure_threads() -> int:
    """torch's intra-op threads = $OMP_NUM_THREADS when set (experiments on a shared machine run with 1);
    returns the count in use."""
    n = os.environ.get("OMP_NUM_THREADS", "")
    if n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --- batching ---------------------------------------------------------------------------------------------
def collate_prompt_response(prompts: Sequence[str], responses: Sequence[str], pad_left: bool = False):
    """Right-padded (input_ids, attention_mask, response_mask) for prompt+response sequences.

    response_mask[t] is 1 where token t belongs to the response (its prediction comes from position t-1)."""
    seqs, rmask = [], []
    for p, r in zip(prompts, responses):
        pi, ri = prompt_ids(p), response_ids(r)
        seqs.append(pi + ri)
        rmask.append([0] * len(pi) + [1] * len(ri))
    return pad_batch(seqs, rmask, pad_left=pad_left)


def pad_batch(seqs: Sequence[Sequence[int]], rmask: Sequence[Sequence[int]] | None = None, pad_left: bool = False):
    T = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, T), PAD, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    rm = torch.zeros((B, T), dtype=torch.float32)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if pad_left else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(s)
        att[i, sl] = 1
        if rmask is not None:
            rm[i, sl] = torch.as_tensor(rmask[i], dtype=torch.float32)
    return ids, att, rm


def position_ids_from_mask(att: torch.Tensor) -> torch.Tensor:
    return (att.cumsum(-1) - 1).clamp(min=0)


# --- log-probs and sampling --------------------------------------------------------------------------------
def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.float().masked_fill(~allowed.to(logits.device), float("-inf"))


def token_logprobs(model, ids, att, allowed: torch.Tensor, with_entropy: bool = False, output_hidden: bool = False):
    """Per-token log p(ids[t] | ids[<t]) for t >= 1 (shape [B, T-1]); optional entropy and last hidden states."""
    out = model(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att),
                output_hidden_states=output_hidden, use_cache=False)
    logits = masked_logits(out.logits[:, :-1], allowed)
    logp_all = torch.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    res = {"logp": lp}
    if with_entropy:
        p = logp_all.exp()
        res["entropy"] = -(p * logp_all.nan_to_num(neginf=0.0)).sum(-1)
    if output_hidden:
        res["hidden"] = out.hidden_states[-1]  # post-norm (what the LM head and the value head see)
    res["logp_all"] = logp_all
    return res


@torch.no_grad()
def sample_responses(model, prompts: Sequence[str], *, temperature: float = 1.0, max_new_tokens: int = MAX_NEW_TOKENS,
                     batch_size: int = 128, seed: int | None = None, greedy: bool = False,
                   return_ids: bool = False):
    """Sample one response per prompt (KV-cached loop; left-padded batches; roles/pad/value slots masked).

    Returns the decoded texts, or (texts, token id lists ending with EOS when the turn ended) with return_ids."""
    model.eval()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    allowed = allowed_token_mask(model.config.vocab_size)
    out: list[str] = []
    out_ids: list[list[int]] = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        ids, att, _ = pad_batch([prompt_ids(p) for p in chunk], pad_left=True)
        B = ids.shape[0]
        pos = position_ids_from_mask(att)
        res = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        past = res.past_key_values
        logits = res.logits[:, -1]
        done = torch.zeros(B, dtype=torch.bool)
        gen_tokens = []
        next_pos = pos[:, -1:] + 1
        for _ in range(max_new_tokens):
            lg = masked_logits(logits, allowed)
            if greedy or temperature <= 0:
                tok = lg.argmax(-1)
            else:
                probs = torch.softmax(lg / temperature, dim=-1)
                tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            tok = torch.where(done, torch.full_like(tok, PAD), tok)
            gen_tokens.append(tok)
            done = done | (tok == EOS)
            if bool(done.all()):
                break
            att = torch.cat([att, torch.ones(B, 1, dtype=att.dtype)], dim=1)
            res = model(input_ids=tok[:, None], attention_mask=att, position_ids=next_pos, past_key_values=past,
                        use_cache=True)
            past, logits, next_pos = res.past_key_values, res.logits[:, -1], next_pos + 1
        toks = torch.stack(gen_tokens, 1).tolist()
        out.extend(decode_ids(t) for t in toks)
        for t in toks:
            ids_ = [i for i in t if i != PAD]
            out_ids.append(ids_[: ids_.index(EOS) + 1] if EOS in ids_ else ids_)
    return (out, out_ids) if return_ids else out


# --- models -------------------------------------------------------------------------------------------------
def load_policy(path: str | Path):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m.eval()
    return m


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


# --- files --------------------------------------------------------------------------------------------------
def to_jsonable(o):
    if is_dataclass(o):
        return to_jsonable(asdict(o))
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_json(path: str | Path, obj) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    return p


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as f:
        for r in rows:
            f.write(json.dumps(to_jsonable(r)) + "\n")
    return p


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def hash_obj(obj) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()


def hash_files(paths: Iterable[str | Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        pp = Path(p)
        if pp.is_file():
            h.update(pp.name.encode())
            h.update(pp.read_bytes())
    return h.hexdigest()


def plot_curves(history: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path | None:
    """One panel per logged series (x = step). Skips silently if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return None
    keys = [k for k, v in history.items() if len(v) > 0]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        v = np.asarray(history[k], dtype=float)
        ax.plot(np.arange(len(v)), v, lw=1)
        if len(v) > 20:  # smoothed overlay
            w = max(2, len(v) // 20)
            ax.plot(np.arange(w - 1, len(v)), np.convolve(v, np.ones(w) / w, mode="valid"), lw=2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return p


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t0


def progress(iterable=None, total=None, desc: str = "", disable: bool | None = None):
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("ALIGNGATE_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=disable, mininterval=0.5)
