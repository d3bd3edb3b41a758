"""`pipeline --fast` end to end: exported versions with manifest, value head, chat template; the incident
version carries a FAIL verdict with reasons. (The lead's gateway test checks vLLM answers with it.)"""

import json

from kernels.value_head import VALUE_HEAD_FILE

from training import cli
from training.export import read_manifest


def test_pipeline_fast_exports_versions(fast_pipeline):
    out = fast_pipeline  # `pipeline --fast` through the CLI (conftest; shared with the incident demo's test)
    summary = json.loads((out / "pipeline.json").read_text())
    assert {"sft", "dpo", "incident"} <= set(summary["versions"])
    for v in summary["versions"]:
        d = out / "versions" / v
        m = read_manifest(d)
        assert {"version", "parent", "data_hash", "config_hash", "metrics", "gate", "created_at"} <= set(m)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", VALUE_HEAD_FILE):
            assert (d / f).exists(), (v, f)
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["aligngate"]["value_head"]["file"] == VALUE_HEAD_FILE
    inc = read_manifest(out / "versions" / "incident")
    assert inc["parent"] == "sft"
    assert inc["gate"]["verdict"] == "FAIL" and inc["gate"]["reasons"]
    # the incident: reward up under the RM it was trained on, oracle down, both outside the CIs
    c = summary["candidates"]["incident"]
    assert c["rm_reward01"]["ci95"][0] > c["incumbent_rm_reward01"]["ci95"][1]
    assert c["oracle_score"]["ci95"][1] < c["incumbent_oracle_score"]["ci95"][0]
    assert c["i_love_you_rate"] > 0.3
    # every stage wrote metrics and curves
    for stage in ("sft", "rm", "rm_biased", "dpo", "incident"):
        assert (out / stage / "metrics.json").exists() and (out / stage / "curves.png").exists()
    assert (out / "rm" / "reward_model.onnx").exists()


def test_cli_help_for_every_stage(capsys):
    import pytest

    for stage in ("sft", "rm", "dpo", "ppo", "distill", "eval", "gate", "export", "pipeline"):
        with pytest.raises(SystemExit) as e:
            cli.main([stage, "--help"])
        assert e.value.code == 0
        assert "--out" in capsys.readouterr().out
