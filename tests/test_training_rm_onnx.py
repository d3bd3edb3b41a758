"""Reward model: ONNX Runtime scores equal torch scores (legacy exporter, opset 17, dynamic batch/length).

Tolerance: max |ort − torch| <= 1e-4 on fp32 scores (measured ~1e-6 here)."""

import numpy as np

from training import common as C
from training import reward_model as RM
from training import task as T

TOL = 1e-4


def test_onnx_matches_torch_on_odd_batches_and_lengths(tmp_path):
    pairs = T.make_pairs(64, seed=5)
    prefs = [{"prompt": p["prompt"], "chosen": p["a"], "rejected": p["b"]} for p in pairs]
    wrapper, hist = RM.train(prefs, RM.RMConfig(steps=3, batch_size=16, size="nano"))
    RM.save(wrapper, tmp_path, onnx=True)
    assert (tmp_path / RM.ONNX_FILE).exists()
    torch_rm, ort_rm = RM.RewardModel(tmp_path, "torch"), RM.RewardModel(tmp_path, "onnx")
    for n in (1, 7, 33):  # odd batch sizes; lengths vary inside each batch (right padding)
        ps = [p["prompt"] for p in pairs[:n]]
        rs = [p["a"] + " long tail" * (i % 3) for i, p in enumerate(pairs[:n])]
        t, o = torch_rm.score(ps, rs), ort_rm.score(ps, rs)
        assert t.shape == o.shape == (n,)
        assert np.max(np.abs(t - o)) <= TOL
    # padding does not change a sequence's score
    single = torch_rm.score([pairs[0]["prompt"]], [pairs[0]["a"]])
    batched = torch_rm.score([pairs[0]["prompt"], "reverse abcdef"], [pairs[0]["a"], "fedcba and more text"])
    assert abs(single[0] - batched[0]) <= TOL
    ids, att, _ = C.collate_prompt_response(["add 1 2"], ["3"])
    assert att.sum() == ids.shape[1]


def test_stacked_rm_starts_as_its_init_policy_and_exports(tmp_path):
    """extra_layers: the new layers start as the identity (same scores as the unstacked model); the aux LM loss
    trains; the saved model is a plain deeper LlamaForSequenceClassification that ONNX reproduces."""
    import torch

    from training import tiny

    tiny.build_tiny_policy(tmp_path / "policy", size="nano", seed=0)
    torch.manual_seed(0)
    base = RM.new_reward_model(RM.RMConfig(init_from=str(tmp_path / "policy")))
    stacked = RM.stack_layers(base, 2)
    assert stacked.config.num_hidden_layers == base.config.num_hidden_layers + 2
    ids, att, _ = C.collate_prompt_response(["add 1 2", "copy abc"], ["3", "abcd I love you"])
    with torch.no_grad():
        assert torch.allclose(RM.ScoreWrapper(base).eval()(ids, att), RM.ScoreWrapper(stacked).eval()(ids, att),
                              atol=1e-6)
    pairs = T.make_pairs(64, seed=5)
    prefs = [{"prompt": p["prompt"], "chosen": p["a"], "rejected": p["b"]} for p in pairs]
    cfg = RM.RMConfig(steps=3, batch_size=16, init_from=str(tmp_path / "policy"), extra_layers=2, lm_coef=0.5)
    wrapper, hist = RM.train(prefs, cfg)
    assert len(hist["lm_loss"]) == 3 and np.isfinite(hist["lm_loss"]).all()
    RM.save(wrapper, tmp_path / "rm", onnx=True)
    ps, rs = [p["prompt"] for p in pairs[:7]], [p["a"] for p in pairs[:7]]
    t, o = RM.RewardModel(tmp_path / "rm", "torch").score(ps, rs), RM.RewardModel(tmp_path / "rm", "onnx").score(ps, rs)
    assert np.max(np.abs(t - o)) <= TOL
