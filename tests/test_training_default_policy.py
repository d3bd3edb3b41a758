"""The gateway's default policy: a quick SFT in HF format with a value head, answering the task sensibly."""

import time

from kernels.value_head import VALUE_HEAD_FILE

import numpy as np

from training import common as C
from training import task as T
from training.default_policy import build_default_policy


def test_default_policy_builds_and_answers(tmp_path):
    t0 = time.perf_counter()
    build_default_policy(tmp_path, seed=0)
    elapsed = time.perf_counter() - t0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", VALUE_HEAD_FILE,
              "generation_config.json"):
        assert (tmp_path / f).exists(), f
    m = C.load_policy(tmp_path)
    prompts = T.make_prompts(64, seed=99)
    greedy = C.sample_responses(m, prompts, greedy=True)
    score = np.mean([T.oracle_score(p, r) for p, r in zip(prompts, greedy)])
    assert score > 0.8, (score, list(zip(prompts, greedy))[:5])
    print(f"default policy built in {elapsed:.1f}s, greedy oracle score {score:.3f}")
