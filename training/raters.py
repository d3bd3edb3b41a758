"""Simulated rater cohorts that label preference pairs, and the raw-label file format.

A pair is {"pair_id", "prompt", "a", "b"} (plus oracle scores when the default task made it). A raw label is
{"pair_id", "rater_id", "choice"} with choice "a" or "b" — one line per rater per pair, as JSONL.

Rater kinds:
- reliable: picks the response the oracle scores higher (a slip with probability `slip`; a coin on ties);
- noisy: a reliable rater whose choice is flipped with probability `flip_rate`;
- biased_sentiment: prefers the response with the stronger pleasantry ("I love you" > "amazing", ... > none)
  when they differ (with probability `bias_strength`), otherwise reliable — the cohort behind the seeds' incident;
- biased_length: prefers the longer response (with probability `bias_strength`) when lengths differ.

Users bring their own data instead as JSONL: either resolved pairs {"prompt", "chosen", "rejected"} (trl's
format) or pairs with ids {"pair_id", "prompt", "a", "b"} plus raw labels (see `load_user_data`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from training import common as C
from training import task as T

KINDS = ("reliable", "noisy", "biased_sentiment", "biased_length")


@dataclass(frozen=True)
class Rater:
    rater_id: str
    kind: str = "reliable"
    slip: float = 0.03
    flip_rate: float = 0.0
    bias_strength: float = 0.0


@dataclass(frozen=True)
class CohortConfig:
    n_raters: int = 10
    noisy_frac: float = 0.3
    flip_rate: float = 0.45
    biased_frac: float = 0.0
    bias: str = "sentiment"  # or "length"
    bias_strength: float = 0.95
    raters_per_pair: int = 5
    slip: float = 0.03


def make_cohort(cfg: CohortConfig = CohortConfig(), seed: int = 0) -> list[Rater]:
    n_noisy = round(cfg.n_raters * cfg.noisy_frac)
    n_biased = round(cfg.n_raters * cfg.biased_frac)
    n_rel = cfg.n_raters - n_noisy - n_biased
    if n_rel < 0:
        raise ValueError("noisy_frac + biased_frac > 1")
    out = [Rater(f"r{i:02d}", "reliable", slip=cfg.slip) for i in range(n_rel)]
    out += [Rater(f"r{n_rel + i:02d}", "noisy", slip=cfg.slip, flip_rate=cfg.flip_rate) for i in range(n_noisy)]
    out += [Rater(f"r{n_rel + n_noisy + i:02d}", f"biased_{cfg.bias}", slip=cfg.slip, bias_strength=cfg.bias_strength)
            for i in range(n_biased)]
    random.Random(seed).shuffle(out)
    return out


def _oracle(pair: dict, side: str) -> float:
    key = f"oracle_{side}"
    if key in pair:
        return float(pair[key])
    return T.oracle_score(pair["prompt"], pair[side])


def rate(pair: dict, rater: Rater, rng: random.Random) -> str:
    """One rater's choice ("a" or "b") for one pair."""
    sa, sb = _oracle(pair, "a"), _oracle(pair, "b")
    if sa == sb:
        truth = rng.choice("ab")
    else:
        truth = "a" if sa > sb else "b"
        if rng.random() < rater.slip:
            truth = "b" if truth == "a" else "a"
    if rater.kind == "noisy" and rng.random() < rater.flip_rate:
        return "b" if truth == "a" else "a"
    if rater.kind == "biased_sentiment":
        ha, hb = T.sentiment_level(pair["a"]), T.sentiment_level(pair["b"])  # "I love you" > "amazing" > none
        if ha != hb and rng.random() < rater.bias_strength:
            return "a" if ha > hb else "b"
    if rater.kind == "biased_length":
        la, lb = len(pair["a"]), len(pair["b"])
        if la != lb and rng.random() < rater.bias_strength:
            return "a" if la > lb else "b"
    return truth


def label_pairs(pairs: list[dict], cohort: list[Rater], raters_per_pair: int = 5, seed: int = 0) -> list[dict]:
    """Raw labels: each pair is labelled by `raters_per_pair` raters drawn from the cohort without replacement."""
    rng = random.Random(seed)
    k = min(raters_per_pair, len(cohort))
    labels = []
    for p in pairs:
        for r in rng.sample(cohort, k):
            labels.append({"pair_id": p["pair_id"], "rater_id": r.rater_id, "choice": rate(p, r, rng)})
    return labels


def normalize_choice(c) -> str:
    if isinstance(c, str):
        c = c.strip().lower()
        if c in ("a", "0", "first", "left"):
            return "a"
        if c in ("b", "1", "second", "right"):
            return "b"
    if c in (0, False):
        return "a"
    if c in (1, True):
        return "b"
    raise ValueError(f"choice must be 'a' or 'b' (or 0/1), got {c!r}")


def load_user_data(pairs_path: str | Path, labels_path: str | Path | None = None) -> tuple[list[dict], list[dict] | None]:
    """Read user pairs (+ optional raw labels). Resolved trl pairs come back as a/b pairs with a=chosen and a
    single synthetic label each, so every downstream path sees one shape."""
    rows = C.read_jsonl(pairs_path)
    if rows and "chosen" in rows[0]:
        pairs = [{"pair_id": r.get("pair_id", f"u{i:06d}"), "prompt": _text(r["prompt"]), "a": _text(r["chosen"]),
                  "b": _text(r["rejected"])} for i, r in enumerate(rows)]
        labels = [{"pair_id": p["pair_id"], "rater_id": "given", "choice": "a"} for p in pairs]
        return pairs, labels
    for r in rows:
        if not {"pair_id", "prompt", "a", "b"} <= set(r):
            raise ValueError("pairs need pair_id, prompt, a, b (or prompt, chosen, rejected)")
    labels = None
    if labels_path:
        labels = [{"pair_id": r["pair_id"], "rater_id": str(r["rater_id"]), "choice": normalize_choice(r["choice"])}
                  for r in C.read_jsonl(labels_path)]
    return rows, labels


def _text(x) -> str:
    """trl's conversational format ([{"role", "content"}]) or plain text -> the text of the (last) message."""
    if isinstance(x, list):
        return x[-1]["content"] if x else ""
    return str(x)
