"""Loss and controller formulas: DPO = ln 2 at initialisation, Bradley–Terry on a hand-computed pair, the
adaptive KL controller moving β toward the target in both directions, GAE on a hand-computed case."""

import math

import pytest
import torch

from training import ppo
from training.reward_model import bradley_terry_loss


def test_bradley_terry_hand_computed_pair():
    # r_w = 2, r_l = 0.5: -log σ(1.5) = log(1 + e^-1.5) = 0.2014132779827524
    loss = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-7)
    assert loss.item() == pytest.approx(0.2014132779827524, abs=1e-7)
    # swapped pair costs more; equal scores cost ln 2
    assert bradley_terry_loss(torch.tensor([0.5]), torch.tensor([2.0])).item() == pytest.approx(1.7014132779827524, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2), abs=1e-7)
    # centering term: 0.01 * (r_w + r_l)^2 = 0.01 * 6.25
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]), center=0.01).item() == pytest.approx(0.2014132779827524 + 0.0625, abs=1e-6)


def test_kl_controller_moves_beta_toward_target_both_ways():
    ctl = ppo.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    b0 = ctl.value
    ctl.update(current_kl=12.0, n_steps=256)  # KL too high -> β up, by the clipped error 0.2
    assert ctl.value == pytest.approx(b0 * (1 + 0.2 * 256 / 10000))
    b1 = ctl.value
    ctl.update(current_kl=3.0, n_steps=256)  # KL too low -> β down; e = 3/6 - 1 = -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(b1 * (1 - 0.2 * 256 / 10000))
    b2 = ctl.value
    ctl.update(current_kl=6.6, n_steps=256)  # inside the clip: e = 0.1
    assert ctl.value == pytest.approx(b2 * (1 + 0.1 * 256 / 10000))
    ctl.update(current_kl=6.0, n_steps=256)  # on target: unchanged
    assert ctl.value == pytest.approx(b2 * (1 + 0.1 * 256 / 10000))
    # repeated updates converge toward a β that holds KL at target in a toy linear world: KL = 1.2 / β
    ctl = ppo.AdaptiveKLController(0.05, target=6.0, horizon=100)
    for _ in range(300):
        ctl.update(1.2 / ctl.value, n_steps=10)
    assert 1.2 / ctl.value == pytest.approx(6.0, rel=0.05)


def test_gae_hand_computed():
    # one response of 2 tokens at positions 1..2 (position 0 is prompt), γ = 1, λ = 1: advantages = returns - V
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.0, 0.25, 0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0, 0].item() == 0.0
    assert adv[0, 1].item() == pytest.approx(0.75)
    assert adv[0, 2].item() == pytest.approx(0.5)
    assert ret[0, 1:].tolist() == pytest.approx([1.0, 1.0])


def test_dpo_loss_is_ln2_at_initialisation(tmp_path):
    from training import dpo, tiny

    tiny.build_tiny_policy(tmp_path / "pol", size="nano", seed=0)
    prefs = [{"prompt": "add 1 2", "chosen": "3", "rejected": "4"},
             {"prompt": "reverse abc", "chosen": "cba", "rejected": "cba I love you!"},
             {"prompt": "upper xyz", "chosen": "XYZ", "rejected": "xyz"},
             {"prompt": "copy hello", "chosen": "hello", "rejected": "hell"}]
    loss = dpo.initial_loss(tmp_path / "pol", prefs, beta=0.1, work_dir=tmp_path / "work")
    assert loss == pytest.approx(math.log(2), abs=1e-6)


def test_win_rate_ties_count_half_and_ceiling():
    """Oracle win rate: win 1, tie ½, loss 0; an always-exact candidate scores 1 − ½·(incumbent's exact rate)."""
    import numpy as np

    from training.evaluate import decisive_win_rate, win_vector

    inc = np.array([1.0, 1.0, 0.5, 0.2])
    cand = np.array([1.0, 0.4, 0.5, 0.9])
    assert win_vector(cand, inc).tolist() == [0.5, 0.0, 0.5, 1.0]
    assert win_vector(np.ones_like(inc), inc).mean() == pytest.approx(1 - 0.5 * 0.5)
    # ties left out: one win, one loss -> 0.5 over 2 decided prompts; all ties -> no decided prompt
    d = decisive_win_rate(np.array([0.5, 0.0, 0.5, 1.0, 1.0, 1.0]))
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.75) and d["ci95"][0] <= 0.75 <= d["ci95"][1]
    assert decisive_win_rate(np.array([0.5, 0.5]))["n"] == 0
