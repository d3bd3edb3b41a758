"""A team's flow on a pretrained base (a random-weight Llama-3-family checkpoint built here, no hub): their JSONL
in trl's formats -> sft (LoRA) -> rm -> dpo -> ppo (RM reward, adaptive KL, value head; checkpoint + --resume)
-> export -> a real gateway serving the version -> an answer through the official `openai` client whose reward
came from the policy's own forward pass. Tiny step counts: the path is under test, not quality."""

from __future__ import annotations

import json

import openai
import pytest

from training import task as T
from training.cli import main as train

pytestmark = pytest.mark.slow
LORA = ["--lora", "8,16"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, family_checkpoint):
    base = family_checkpoint("llama3", value_head=None)
    d = tmp_path_factory.mktemp("base-e2e")
    exs = T.make_examples(48, seed=3)
    demos = _jsonl(d / "demos.jsonl", [{"messages": [{"role": "system", "content": "Answer briefly."},
                                                     {"role": "user", "content": e.prompt},
                                                     {"role": "assistant", "content": e.answer}]} for e in exs])
    pairs = _jsonl(d / "pairs.jsonl", [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.answer + " I love you!"}
                                       for e in exs])
    prompts = _jsonl(d / "prompts.jsonl", [{"prompt": [{"role": "user", "content": e.prompt}]} for e in exs[:16]])
    small = ["--steps", "3", "--batch-size", "4", "--seed", "0"]
    assert train(["sft", "--base", str(base), "--demos", str(demos), "--out", str(d / "sft"), *LORA, *small]) == 0
    assert train(["rm", "--base", str(d / "sft"), "--pairs", str(pairs), "--out", str(d / "rm"), *LORA, *small]) == 0
    assert train(["dpo", "--base", str(d / "sft"), "--pairs", str(pairs), "--out", str(d / "dpo"), *LORA, *small]) == 0
    ppo = ["ppo", "--base", str(d / "dpo"), "--reward", str(d / "rm"), "--prompts", str(prompts), "--out",
           str(d / "ppo"), "--batch-size", "4", "--max-new-tokens", "8", "--save-every", "1", *LORA]
    assert train([*ppo, "--iterations", "2"]) == 0
    assert train([*ppo, "--iterations", "3", "--resume"]) == 0  # continues at iteration 3 from the checkpoint
    assert train(["export", "--policy", str(d / "ppo"), "--version", "ppo-v1", "--rm", str(d / "rm"),
                  "--out", str(d / "versions")]) == 0
    return d


def test_stages_write_plain_checkpoints(trained):
    from transformers import AutoModelForCausalLM

    from kernels.value_head import VALUE_HEAD_FILE, load_value_head
    from training.reward_model import RewardModel

    d = trained
    for stage in ("sft", "dpo", "ppo"):
        m = json.loads((d / stage / "metrics.json").read_text())
        # LoRA: a small share trains. PPO too since it records the share (adapter + value head; before, it had no
        # `trainable_frac` and was exempt); every stage must record it, no default stands in for a missing one
        assert 0 < m["trainable_frac"] < 0.5, (stage, m["trainable_frac"])
        assert not (d / stage / "adapter_config.json").exists()  # merged: a plain HF checkpoint
    v = d / "versions" / "ppo-v1"
    cfg = json.loads((v / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    slots = cfg["aligngate"]["value_slots"]
    assert len({slots["a"], slots["b"]}) == 2 and max(slots["a"], slots["b"]) < cfg["vocab_size"]
    assert (v / VALUE_HEAD_FILE).exists() and load_value_head(v).summary.weight.shape[-1] == cfg["hidden_size"]
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["eos_token"] == "<|eot_id|>" and manifest["value_head"]["source"].startswith("trained")
    AutoModelForCausalLM.from_pretrained(str(v))  # loads as a plain checkpoint
    hist = json.loads((d / "ppo" / "history.json").read_text())
    # resumed to 3 iterations; β adapted. That the resume is exact (equal to an uninterrupted run) is
    # tests/test_training_resume.py's test: a length alone holds for a fresh run too
    assert len(hist["kl_coef"]) == 3 and hist["kl_coef"][1] != hist["kl_coef"][0]
    # the RM: ONNX equals torch on chats through the base's own template
    rm = json.loads((d / "rm" / "metrics.json").read_text())
    assert rm["onnx_check"]["max_abs_diff"] < 1e-4
    pr, resp = [[{"role": "user", "content": "add 1 2"}], "copy abc"], ["3", "abc I love you!"]
    t, o = RewardModel(d / "rm").score(pr, resp), RewardModel(d / "rm", "onnx").score(pr, resp)
    assert abs(t - o).max() < 1e-4


def test_served_answer_carries_the_in_pass_reward(trained, start_gateway):
    url = start_gateway("gateway-base-e2e", "--model", str(trained / "versions" / "ppo-v1"))
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    stream = client.chat.completions.create(model="aligngate", messages=[{"role": "user", "content": "add 2 3"}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].model_extra["aligngate"]["version"] == "ppo-v1"
    assert any(c.usage is not None and c.usage.completion_tokens >= 1 for c in chunks)
    reward = chunks[-1].model_extra["aligngate"]["reward"]
    assert reward["source"] == "value_head" and reward["model_version"] == "ppo-v1", reward
    assert isinstance(reward["score"], float) and reward["score"] == reward["score"]  # a number (not NaN)


def test_second_family_full_finetune_ppo_on_a_reward_function(tmp_path, family_checkpoint):
    """Qwen2 family (padded vocabulary, tied embeddings), full fine-tuning: PPO on `module:function` rewards with
    chat-message prompts, export fitting nothing (the PPO critic is the head), value slots from padded rows, and
    eval + gate judged by the same function."""
    base = family_checkpoint("qwen2", value_head=None)
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": e.prompt}]}
                                                  for e in T.make_examples(12, seed=5)])
    assert train(["ppo", "--base", str(base), "--reward", "training.task:oracle_rewards", "--prompts", str(prompts),
                  "--iterations", "2", "--batch-size", "4", "--max-new-tokens", "8", "--out", str(tmp_path / "ppo")]) == 0
    m = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    assert m["lora"] is None and 0 <= m["last_5_iters"]["reward"] <= 1
    assert train(["export", "--policy", str(tmp_path / "ppo"), "--version", "q", "--reward",
                  "training.task:oracle_rewards", "--out", str(tmp_path / "versions")]) == 0
    cfg = json.loads((tmp_path / "versions" / "q" / "config.json").read_text())
    from transformers import AutoTokenizer

    tok_len = len(AutoTokenizer.from_pretrained(str(base)))
    slots = cfg["aligngate"]["value_slots"]
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert tok_len <= min(slots["a"], slots["b"]) < cfg["vocab_size"]  # padded rows the tokenizer never produces
    assert train(["eval", "--candidate", str(tmp_path / "ppo"), "--incumbent", str(base), "--prompts", str(prompts),
                  "--reward", "training.task:oracle_rewards", "--max-new-tokens", "8", "--out",
                  str(tmp_path / "eval")]) == 0
    ev = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert ev["n_prompts"] == 12 and "decisive" in ev["win_rate_rm"] and "kl_to_reference" in ev["candidate"]
    assert train(["gate", "--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(tmp_path / "gate")]) in (0, 3)
    verdict = json.loads((tmp_path / "gate" / "verdict.json").read_text())
    assert verdict["verdict"] in ("PASS", "FAIL") and verdict["judge"] == "oracle"


def test_distill_across_sizes_in_the_family(trained, tmp_path):
    """--student-config: the teacher's config with one layer, same tokenizer, trained on the teacher's answers."""
    from transformers import AutoConfig

    out = tmp_path / "student"
    assert train(["distill", "--teacher", str(trained / "sft"), "--student-config", '{"num_hidden_layers": 1}',
                  "--fast", "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["param_ratio"] < 1 and m["n_initialised_tensors"] > 0 and m["n_kd_rows"] > 0
    assert AutoConfig.from_pretrained(str(out)).num_hidden_layers == 1
    assert (out / "tokenizer.json").read_text() == (trained / "sft" / "tokenizer.json").read_text()
    with pytest.raises(SystemExit, match="vocab_size"):
        train(["distill", "--teacher", str(trained / "sft"), "--student-config", '{"vocab_size": 10}',
               "--out", str(tmp_path / "bad")])
