"""The gateway's embedded default policy: a quick SFT on the default task (≤ ~60 s on 2 cores).

`build_default_policy(out_dir, seed)` writes an HF model directory (via `training.tiny.save_policy`: weights,
tokenizer, chat template, generation config) plus a value head (via `kernels.value_head.save_value_head`) fitted
to the oracle score of the policy's own samples, so the in-pass value reads as an expected task score in [0, 1].
It answers the task prompts ("add 3 5", "reverse abc", "upper abc", "copy abc") sensibly; anything else gets
byte soup, as from any 0.5M-parameter model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def build_default_policy(out_dir: Path, seed: int = 0, steps: int = 300) -> None:
    import numpy as np
    from transformers import LlamaForCausalLM

    from kernels.value_head import save_value_head
    from training import common as C
    from training import sft as S
    from training import task as T
    from training import tiny
    from training.value import fit_value_head

    t0 = time.perf_counter()
    out = Path(out_dir)
    C.seed_everything(seed)
    demos = T.make_demonstrations(steps * 64, seed=seed + 1)
    model = LlamaForCausalLM(tiny.llama_config("tiny"))
    S.train_on_pairs(model, [d["prompt"] for d in demos], [d["completion"] for d in demos], steps=steps,
                     batch_size=64, lr=2e-3, warmup=30, weight_decay=0.01, seed=seed, desc="default policy")
    tiny.save_policy(model, out)

    def oracle(prompts, responses):
        return np.array([T.oracle_score(p, r) for p, r in zip(prompts, responses)])

    head, info = fit_value_head(model, oracle, n=256, seed=seed)
    save_value_head(head, out)
    (out / "aligngate_build.json").write_text(json.dumps({
        "builder": "training.default_policy.build_default_policy", "size": "tiny", "seed": seed, "sft_steps": steps,
        "value_head": {"target": "oracle score of the task", **info}, "seconds": round(time.perf_counter() - t0, 1)}))
