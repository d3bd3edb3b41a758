"""Fit a value head for a policy that was not trained with one (SFT, DPO, distilled students).

The gateway reads a reward estimate from the policy's own forward pass (serve/vllm_ext/value_slots.py), so
every exported version carries a `kernels.value_head.ValueHead`. For PPO policies it is the critic trained with
them; for the others it is fitted here: sample responses, score them (reward model on the 0–1 scale, or the
oracle), and solve a ridge regression from the post-norm hidden state at every response position to the
sequence's score (Monte Carlo return, γ = 1). Closed form, a second or two.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from training import common as C
from training import task as T


def fit_value_head(policy, reward_fn: Callable[[Sequence, Sequence[str]], np.ndarray], n: int = 512,
                   seed: int = 0, ridge: float = 1e-2, codec=None, prompts: Sequence | None = None):
    """`codec` (training.chat) and `prompts` for a --base policy; default: the byte codec and the task's prompts."""
    from kernels.value_head import ValueHead
    from training.chat import ByteCodec, rollout_batch

    codec = codec or ByteCodec()
    if prompts:
        prompts = [prompts[i % len(prompts)] for i in range(min(n, max(len(prompts), 64)))]
    else:
        prompts = T.make_prompts(n, seed=seed + 31_337)
    n = len(prompts)
    texts, rids = codec.sample(policy, prompts, seed=seed)
    y = np.asarray(reward_fn(prompts, texts), dtype=np.float64)
    xs, ys = [], []
    for s in range(0, n, 128):  # chunks: a real base's logits [batch, length, vocab] are large
        ids, att, rmask = rollout_batch(codec, prompts[s:s + 128], rids[s:s + 128])
        with torch.no_grad():
            out = policy(input_ids=ids, attention_mask=att, position_ids=C.position_ids_from_mask(att),
                         output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1][:, :-1].double()  # state before each response token
        m = rmask[:, 1:] > 0
        xs.append(h[m].numpy())
        ys.append(np.repeat(y[s:s + 128], m.sum(-1).numpy()))
    X, Y = np.concatenate(xs), np.concatenate(ys)
    Xb = np.concatenate([X, np.ones((len(X), 1))], 1)
    A = Xb.T @ Xb + ridge * np.eye(Xb.shape[1])
    w = np.linalg.solve(A, Xb.T @ Y)
    head = ValueHead(policy.config.get_text_config().hidden_size)
    with torch.no_grad():
        head.summary.weight.copy_(torch.as_tensor(w[:-1], dtype=torch.float32).view(1, -1))
        head.summary.bias.copy_(torch.as_tensor(w[-1:], dtype=torch.float32))
    pred = Xb @ w
    info = {"n_sequences": n, "mean_target": float(y.mean()), "r2": float(1 - np.var(Y - pred) / max(np.var(Y), 1e-12))}
    return head, info
