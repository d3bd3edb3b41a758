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
