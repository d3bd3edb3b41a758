"""PPO with a value head and an adaptive KL controller (trl removed both from its PPO; this is our own loop).

Per iteration:
  1. rollout: sample one response per prompt from the policy (temperature 1);
  2. score: reward model on prompt+response -> reward01 = σ(r − μ_ref) in [0, 1] (see reward_model.py);
  3. per-token reward: −β·(log π − log π_ref) at every response token, + the score at the last token;
  4. advantages: GAE (γ = 1, λ = 0.95) with the value head's estimates, whitened;
  5. update: clipped policy loss + clipped value loss, a few epochs of minibatches;
  6. β update (Ziegler et al. 2019, as in their released code):
        e = clip(KL/target − 1, −0.2, 0.2);  β ← β·(1 + e·n_steps/horizon)

On a `--base` checkpoint the same loop runs through the base's tokenizer and chat template (training/chat.py),
optionally on a LoRA adapter (peft): then the frozen reference is the same weights with the adapter disabled, so
a 0.5B base needs one copy in memory. Prompts come from the user's data; rewards from an RM directory or a
`module:function` (training/rewards.py).

The value head is the reference `kernels.value_head.ValueHead` (TRL semantics: Linear(H, 1) with bias on the
post-norm last hidden state) sharing the policy's backbone, so the exported policy yields its value in the same
forward pass. Logged per step: reward, KL, entropy, value loss, β (+ the oracle score, which the loop never
sees — that is how the incident shows up in the curves).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import common as C
from training import task as T
from training import tiny
from training.formats import prompt_text


class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        e = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + e * n_steps / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class PPOConfig:
    iterations: int = 80
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 32
    ppo_epochs: int = 2
    lr: float = 1e-4
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.05
    adaptive_kl: bool = True
    target_kl: float = 1.0  # nats per response
    horizon: int = 500
    temperature: float = 1.0
    max_new_tokens: int = C.MAX_NEW_TOKENS
    value_warmup_iters: int = 3  # value-head-only updates before the policy moves
    seed: int = 0
    eval_prompts: int = 256
    save_every: int = 0  # checkpoint (trainable weights, value head, optimizer, β, RNGs) every N iterations
    resume: bool = False


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (torch.where(m > 0, x, 0.0)).sum() / m.sum().clamp(min=1)


def whiten(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mu = masked_mean(x, m)
    var = masked_mean((x - mu) ** 2, m)
    return torch.where(m > 0, (x - mu) * torch.rsqrt(var + 1e-8), 0.0)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns over the masked (response) positions of [B, L] tensors; positions outside the
    mask are skipped (a response is a contiguous run ending at its last token)."""
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B)
    next_v = torch.zeros(B)
    for t in reversed(range(L)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last_new = delta + gamma * lam * last
        adv[:, t] = torch.where(m > 0, last_new, 0.0)
        last = torch.where(m > 0, last_new, last)
        next_v = torch.where(m > 0, values[:, t], next_v)
    return adv, adv + values


class PolicyWithValue(torch.nn.Module):
    def __init__(self, policy, head=None):
        super().__init__()
        from kernels.value_head import ValueHead

        self.policy = policy
        self.v_head = head if head is not None else ValueHead(policy.config.get_text_config().hidden_size)
        if head is None:
            with torch.no_grad():
                self.v_head.summary.weight.zero_()
                self.v_head.summary.bias.fill_(0.5)

    def forward(self, ids, att, allowed, with_entropy=False):
        res = C.token_logprobs(self.policy, ids, att, allowed, with_entropy=with_entropy, output_hidden=True)
        res["values"] = self.v_head(res["hidden"][:, :-1])
        return res


class PromptStream:
    """Rollout prompts: the default task's generator, or the user's prompts reshuffled every epoch."""

    def __init__(self, prompts: list | None, seed: int):
        self.rng = random.Random(seed)
        self.prompts = list(prompts) if prompts else None
        self.order: list[int] = []

    def take(self, n: int) -> list:
        if self.prompts is None:
            return [T.make_example(self.rng).prompt for _ in range(n)]
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            out.append(self.prompts[self.order.pop()])
        return out


def _load(policy_dir, lora):
    """(policy, reference or None, codec): a --base lineage through its own template (LoRA when asked; the
    reference is then the adapter switched off), the default tiny policy as before."""
    from training import base as B
    from training.chat import ByteCodec, codec_for

    codec = codec_for(policy_dir)
    if isinstance(codec, ByteCodec) and lora is None:
        policy, ref = C.load_policy(policy_dir), C.load_policy(policy_dir)
    else:
        policy = B.with_lora(B.load_causal_lm(policy_dir), lora)
        ref = None if lora is not None else B.load_causal_lm(policy_dir)
    if ref is not None:
        for p in ref.parameters():
            p.requires_grad_(False)
    return policy, ref, codec


def ref_logprobs(policy, ref, ids, att, allowed):
    if ref is not None:
        return C.token_logprobs(ref, ids, att, allowed)["logp"]
    with policy.disable_adapter():  # peft: the base weights, i.e. the reference
        return C.token_logprobs(policy, ids, att, allowed)["logp"]


def run(out_dir: str | Path, policy_dir: str | Path, reward_fn, cfg: PPOConfig = PPOConfig(), name: str = "ppo",
        prompt_seed: int | None = None, prompts: list | None = None, lora=None) -> dict:
    """PPO from the policy at `policy_dir` (also the frozen reference) against `reward_fn(prompts, responses)`
    -> array of rewards in [0, 1]. Saves the policy (adapter merged) + value head to `out_dir`. `prompts`: the
    rollout prompts (strings or chat messages; default: the default task's)."""
    from kernels.value_head import save_value_head

    from training import base as B
    from training.chat import ByteCodec, rollout_batch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    policy, ref, codec = _load(policy_dir, lora)
    model = PolicyWithValue(policy)
    allowed = codec.allowed(policy.config.get_text_config().vocab_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = B.trainable_params(model)  # before a LoRA adapter is merged on save
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))
    rng = random.Random(cfg.seed)
    stream = PromptStream(prompts, prompt_seed if prompt_seed is not None else cfg.seed + 555)
    task_prompts = prompts is None or all(T.is_task_prompt(prompt_text(p)) for p in prompts[:64])
    keys = ("reward", "oracle", "kl", "entropy", "value_loss", "policy_loss", "kl_coef", "clipfrac", "length",
            "sentiment_rate")
    hist: dict[str, list[float]] = {k: [] for k in keys}
    ckpt = out / "_ckpt" / "ppo.pt"
    start = 0
    if cfg.resume:
        if not ckpt.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt} (run with --save-every N first)")
        st = torch.load(ckpt, weights_only=False)
        # strict: the checkpoint holds exactly this run's trainable weights (the frozen rest comes from the base)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(names - set(st["trainable"])), sorted(set(st["trainable"]) - names)
        if missing or unexpected:
            raise SystemExit(f"--resume: {ckpt} was saved for other trainable weights ({len(missing)} missing, e.g. "
                             f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}): resume with the "
                             "same --base/--policy and --lora as the run that saved it, or start without --resume")
        loaded = model.load_state_dict(st["trainable"], strict=False)
        assert not loaded.unexpected_keys and set(loaded.missing_keys).isdisjoint(names), loaded
        opt.load_state_dict(st["opt"])
        kl_ctl.value, start, hist = st["kl_coef"], st["iteration"] + 1, st["hist"]
        rng.setstate(st["rng"])
        stream.rng.setstate(st["prompt_rng"])
        stream.order = st["prompt_order"]
    bar = C.progress(range(start, cfg.iterations), total=cfg.iterations - start, desc=name)
    with C.Timer() as timer:
        for it in bar:
            # 1. rollout
            batch_prompts = stream.take(cfg.batch_size)
            texts, rids = codec.sample(policy, batch_prompts, temperature=cfg.temperature,
                                       max_new_tokens=cfg.max_new_tokens, seed=rng.randrange(2**31))
            ids, att, rm = rollout_batch(codec, batch_prompts, rids)
            mask = rm[:, 1:]  # aligned with log-probs of tokens 1..T-1
            # 2. score
            scores = torch.as_tensor(np.asarray(reward_fn(batch_prompts, texts), dtype=np.float32))
            with torch.no_grad():
                old = model(ids, att, allowed, with_entropy=True)
                ref_lp = ref_logprobs(policy, ref, ids, att, allowed)
            old_lp = torch.where(mask > 0, old["logp"], 0.0)
            ref_lp = torch.where(mask > 0, ref_lp, 0.0)
            old_v = torch.where(mask > 0, old["values"], 0.0)
            # 3. per-token rewards
            kl_tok = (old_lp - ref_lp) * mask
            beta = kl_ctl.value
            rewards = -beta * kl_tok
            last_idx = (mask * torch.arange(mask.shape[1])).argmax(-1)
            rewards[torch.arange(len(batch_prompts)), last_idx] += scores
            # 4. advantages
            adv, returns = gae(rewards, old_v, mask, cfg.gamma, cfg.lam)
            adv = whiten(adv, mask)
            # 5. update
            stats = {"vf": [], "pg": [], "cf": []}
            idx = list(range(len(batch_prompts)))
            for _ in range(cfg.ppo_epochs):
                rng.shuffle(idx)
                for s in range(0, len(idx), cfg.minibatch_size):
                    b = torch.as_tensor(idx[s:s + cfg.minibatch_size])
                    cur = model(ids[b], att[b], allowed)
                    m = mask[b]
                    lp = torch.where(m > 0, cur["logp"], 0.0)
                    ratio = torch.exp(lp - old_lp[b])
                    pg1 = -adv[b] * ratio
                    pg2 = -adv[b] * torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
                    pg_loss = masked_mean(torch.max(pg1, pg2), m)
                    v = cur["values"]
                    v_clip = old_v[b] + torch.clamp(v - old_v[b], -cfg.clip_range_value, cfg.clip_range_value)
                    vf_loss = 0.5 * masked_mean(torch.max((v - returns[b]) ** 2, (v_clip - returns[b]) ** 2), m)
                    loss = cfg.vf_coef * vf_loss + (pg_loss if it >= cfg.value_warmup_iters else 0.0 * pg_loss)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    opt.step()
                    stats["vf"].append(vf_loss.item())
                    stats["pg"].append(pg_loss.item())
                    stats["cf"].append(float(masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), m)))
            # 6. KL controller, on the mean sequence KL of this rollout
            kl_seq = float(kl_tok.sum(-1).mean())
            kl_ctl.update(kl_seq, cfg.batch_size)
            oracle = (float(np.mean([T.oracle_score(prompt_text(p), r) for p, r in zip(batch_prompts, texts)]))
                      if task_prompts else float("nan"))
            ent = float(masked_mean(old["entropy"], mask))
            row = {"reward": float(scores.mean()), "oracle": oracle, "kl": kl_seq, "entropy": ent,
                   "value_loss": float(np.mean(stats["vf"])), "policy_loss": float(np.mean(stats["pg"])),
                   "kl_coef": beta, "clipfrac": float(np.mean(stats["cf"])),
                   "length": float(np.mean([len(t) for t in texts])),
                   "sentiment_rate": float(np.mean([T.has_sentiment(t) for t in texts]))}
            for k in keys:
                hist[k].append(row[k])
            bar.set_postfix(r=f"{row['reward']:.2f}", kl=f"{kl_seq:.2f}", b=f"{beta:.3f}")
            if cfg.save_every and (it + 1) % cfg.save_every == 0:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"trainable": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
                            "opt": opt.state_dict(), "kl_coef": kl_ctl.value, "iteration": it, "hist": hist,
                            "rng": rng.getstate(), "prompt_rng": stream.rng.getstate(),
                            "prompt_order": stream.order}, ckpt)
    policy.eval()
    if isinstance(codec, ByteCodec):
        tiny.save_policy(B.merged(policy), out)
    else:
        B.save_policy(policy, codec.tok, out, policy_dir,
                      B.BaseInfo(base=str(policy_dir), stage="ppo", lora=C.to_jsonable(lora), parent=str(policy_dir)))
    save_value_head(model.v_head, out)
    ev = {}
    if prompts is None and isinstance(codec, ByteCodec):
        from training import sft as S

        ev = S.quick_eval(policy, T.make_prompts(cfg.eval_prompts, seed=cfg.seed + 10_000), seed=cfg.seed)
    first = {k: float(np.mean(v[:5])) for k, v in hist.items()}
    last = {k: float(np.mean(v[-5:])) for k, v in hist.items()}
    metrics = {"stage": "ppo", "name": name, "config": cfg, "parent": str(policy_dir), "train_seconds": timer.seconds,
               "lora": C.to_jsonable(lora), **params, "first_5_iters": first, "last_5_iters": last,
               "final_kl_coef": kl_ctl.value, **ev}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title=f"PPO ({name})")
    return metrics
