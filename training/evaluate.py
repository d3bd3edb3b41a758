"""Evaluation: a candidate policy against an incumbent, judged by the oracle and by the reward model.

Both policies answer the same held-out prompts (sampled at temperature 1, as served). Per policy: oracle score,
RM reward (0–1), KL to the reference (Σ over response tokens of log π − log π_ref on the policy's own samples,
averaged over prompts), mean length (bytes), repetition rate (share of repeated 3-grams within a response),
pleasantry rate. Pairwise: win rate of the candidate over the incumbent (win 1, tie ½, loss 0) by the oracle and
by the RM, each with a 95% percentile-bootstrap CI; the reward-hacking gap = RM win rate − oracle win rate. The
oracle win rate also reports its tie share, its ceiling (what an always-exact candidate would score), and the
decisive win rate (wins / (wins + losses), ties left out, with its own bootstrap CI): when the incumbent is
already exact on most prompts, ties are both answers correct, and the tie-½ rate cannot pass the ceiling.
RM accuracy against the oracle on held-out pairs is reported when pairs are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import common as C
from training import task as T


@dataclass
class EvalConfig:
    n_prompts: int = 400
    seed: int = 0
    prompt_seed: int = 20_000  # disjoint from SFT/PPO prompt streams
    bootstrap: int = 2000


def bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def mean_ci(x, n=2000, seed=0) -> dict:
    lo, hi = bootstrap_ci(x, n, seed)
    return {"mean": float(np.mean(x)), "ci95": [lo, hi], "n": int(len(x))}


def win_vector(cand: np.ndarray, inc: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    return np.where(cand > inc + tol, 1.0, np.where(cand < inc - tol, 0.0, 0.5))


def decisive_win_rate(w: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """wins / (wins + losses) of a win vector (ties left out), with a bootstrap CI over the decided prompts."""
    decided = np.asarray(w)[np.asarray(w) != 0.5]
    if not len(decided):
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    return mean_ci(decided, n, seed)


def repetition_rate(text: str, n: int = 3) -> float:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 0.0 if len(grams) < 2 else 1.0 - len(set(grams)) / len(grams)


@torch.no_grad()
def kl_to_reference(policy, ref, prompts, rids, codec=None) -> np.ndarray:
    """Per-prompt Σ_t log π(y_t) − log π_ref(y_t) over the policy's own sampled response (k1 estimator)."""
    from training.chat import ByteCodec, rollout_batch

    codec = codec or ByteCodec()
    allowed = codec.allowed(policy.config.get_text_config().vocab_size)
    out = []
    step = 128 if isinstance(codec, ByteCodec) else 16  # a real base's logits are [batch, length, vocab]
    for s in range(0, len(prompts), step):
        ids, att, rmask = rollout_batch(codec, prompts[s:s + step], rids[s:s + step])
        m = rmask[:, 1:] > 0
        a = C.token_logprobs(policy, ids, att, allowed)["logp"]
        b = C.token_logprobs(ref, ids, att, allowed)["logp"]
        out.append(torch.where(m, a - b, 0.0).sum(-1).numpy())
    return np.concatenate(out)


def policy_samples(policy_dir, prompts, seed, max_new_tokens: int | None = None) -> dict:
    from training.chat import codec_for, load_any_policy

    pol = load_any_policy(policy_dir)
    codec = codec_for(policy_dir)
    kw = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    texts, rids = codec.sample(pol, prompts, seed=seed, **kw)
    return {"model": pol, "texts": texts, "ids": rids, "codec": codec}


class Judge:
    """Scores responses: a reward-model directory (raw score; reward01 = σ(score − μ_ref)) or a reward function
    `module:function` already on the 0–1 scale (raw = reward01)."""

    def __init__(self, spec):
        from pathlib import Path as P

        from training.rewards import load_reward_fn
        from training.reward_model import RM_CONFIG, RewardModel

        self.spec = str(spec)
        if P(self.spec).is_dir() and (P(self.spec) / RM_CONFIG).exists():
            self.rm, self.mu_ref = RewardModel(self.spec), None
            self.mu_ref = self.rm.mu_ref
            self.fn = None
        else:
            self.rm, self.mu_ref = None, None
            self.fn, _ = load_reward_fn(self.spec)

    def score(self, prompts, texts) -> np.ndarray:
        return self.rm.score(prompts, texts) if self.rm is not None else self.fn(prompts, texts)

    def reward01(self, raw: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(raw - self.mu_ref))) if self.rm is not None else raw


def describe(name, s: dict, prompts, judge, ref, cfg: EvalConfig, oracle: bool = True) -> dict:
    from training.formats import prompt_text

    d = {"name": name,
         "mean_length": float(np.mean([len(t) for t in s["texts"]])),
         "repetition_rate": float(np.mean([repetition_rate(t) for t in s["texts"]])),
         "sentiment_rate": float(np.mean([T.has_sentiment(t) for t in s["texts"]])),
         "i_love_you_rate": float(np.mean([T.sentiment_level(t) == 2 for t in s["texts"]])),
         "examples": [{"prompt": p, "response": r} for p, r in list(zip(prompts, s["texts"]))[:6]]}
    if oracle:
        sc = np.array([T.oracle_score(prompt_text(p), r) for p, r in zip(prompts, s["texts"])])
        s["oracle"] = sc
        d["oracle_score"] = mean_ci(sc, cfg.bootstrap, cfg.seed)
        d["exact_rate"] = float((sc == 1.0).mean())
    if judge is not None:
        raw = judge.score(prompts, s["texts"])
        s["rm"] = raw
        d["rm_reward01"] = mean_ci(judge.reward01(raw), cfg.bootstrap, cfg.seed)
    if ref is not None:
        kl = kl_to_reference(s["model"], ref, prompts, s["ids"], s["codec"])
        d["kl_to_reference"] = mean_ci(kl, cfg.bootstrap, cfg.seed)
    return d


def compare(candidate_dir, incumbent_dir, *, reference_dir=None, rm_dir=None, test_pairs=None,
            cfg: EvalConfig = EvalConfig(), names=("candidate", "incumbent"), prompts=None, judge=None,
            max_new_tokens: int | None = None) -> dict:
    """Candidate vs incumbent on `prompts` (default: the task's held-out prompts). The judge is `judge` (an RM
    dir or module:function) or `rm_dir`; the oracle is used when every prompt is a task prompt."""
    from training.chat import load_any_policy
    from training.formats import prompt_text
    from training.reward_model import accuracy_vs_oracle

    prompts = list(prompts)[: cfg.n_prompts] if prompts else T.make_prompts(cfg.n_prompts, seed=cfg.prompt_seed)
    jd = Judge(judge or rm_dir) if (judge or rm_dir) else None
    oracle = all(T.is_task_prompt(prompt_text(p)) for p in prompts)
    ref = load_any_policy(reference_dir or incumbent_dir)
    cand = policy_samples(candidate_dir, prompts, cfg.seed + 1, max_new_tokens)
    inc = policy_samples(incumbent_dir, prompts, cfg.seed + 2, max_new_tokens)
    res = {"candidate": describe(names[0], cand, prompts, jd, ref, cfg, oracle),
           "incumbent": describe(names[1], inc, prompts, jd, ref, cfg, oracle),
           "candidate_dir": str(candidate_dir), "incumbent_dir": str(incumbent_dir),
           "reference_dir": str(reference_dir or incumbent_dir), "rm_dir": str(rm_dir) if rm_dir else None,
           "judge": jd.spec if jd else None, "n_prompts": len(prompts), "config": cfg}
    w_or = None
    if oracle:
        w_or = win_vector(cand["oracle"], inc["oracle"])
        res["win_rate_oracle"] = mean_ci(w_or, cfg.bootstrap, cfg.seed)
        res["win_rate_oracle"]["ties"] = float((w_or == 0.5).mean())
        # the most any candidate could get against this incumbent (exact on every prompt): ties are half a win,
        # so it is 1 − ½·(incumbent's exact rate) — the yardstick for the win rate above
        res["win_rate_oracle"]["ceiling"] = float(win_vector(np.ones_like(inc["oracle"]), inc["oracle"]).mean())
        res["win_rate_oracle"]["decisive"] = decisive_win_rate(w_or, cfg.bootstrap, cfg.seed)
        res["oracle_delta"] = mean_ci(cand["oracle"] - inc["oracle"], cfg.bootstrap, cfg.seed)
    if jd is not None:
        w_rm = win_vector(cand["rm"], inc["rm"], tol=1e-6)
        res["win_rate_rm"] = mean_ci(w_rm, cfg.bootstrap, cfg.seed)
        res["win_rate_rm"]["ties"] = float((w_rm == 0.5).mean())
        res["win_rate_rm"]["decisive"] = decisive_win_rate(w_rm, cfg.bootstrap, cfg.seed)
        if w_or is not None:
            res["hacking_gap"] = mean_ci(w_rm - w_or, cfg.bootstrap, cfg.seed)
        res["rm_reward_delta"] = mean_ci(jd.reward01(cand["rm"]) - jd.reward01(inc["rm"]), cfg.bootstrap, cfg.seed)
    if jd is not None and jd.rm is not None and test_pairs:
        pa = [p["prompt"] for p in test_pairs]
        res["rm_accuracy_vs_oracle"] = accuracy_vs_oracle(
            jd.rm.score(pa, [p["a"] for p in test_pairs]), jd.rm.score(pa, [p["b"] for p in test_pairs]),
            [p["oracle_a"] for p in test_pairs], [p["oracle_b"] for p in test_pairs])
    return res


def res_delta(a_raw, b_raw, mu):
    sig = lambda x: 1 / (1 + np.exp(-(x - mu)))  # noqa: E731
    return sig(a_raw) - sig(b_raw)


def run(out_path: str | Path, candidate_dir, incumbent_dir, **kw) -> dict:
    res = compare(candidate_dir, incumbent_dir, **kw)
    C.write_json(out_path, res)
    return res
