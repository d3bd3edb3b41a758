"""User data files in trl's formats (training/formats.py): every format reads, every malformed row is an error
naming the file, the line and what is wrong, nothing is dropped silently, and the CLI says the same."""

from __future__ import annotations

import json

import pytest

from training import formats as F
from training.cli import main as cli_main

U = {"role": "user", "content": "add 1 2"}
A3 = {"role": "assistant", "content": "3"}
A4 = {"role": "assistant", "content": "4"}


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("kind,rows,fmt", [
    ("sft", [{"prompt": "add 1 2", "completion": "3"}], "prompt_completion"),
    ("sft", [{"prompt": [U], "completion": [A3]}], "conversational_prompt_completion"),
    ("sft", [{"messages": [{"role": "system", "content": "be brief"}, U, A3]}], "conversational_messages"),
    ("pairs", [{"prompt": "add 1 2", "chosen": "3", "rejected": "4"}], "preference"),
    ("pairs", [{"prompt": [U], "chosen": [A3], "rejected": [A4]}], "conversational_preference"),
    ("pairs", [{"pair_id": "p1", "prompt": "add 1 2", "a": "3", "b": "4"}], "unlabelled_pairs"),
    ("labels", [{"pair_id": "p1", "rater_id": "r1", "choice": "a"}], "rater_labels"),
    ("prompts", [{"prompt": "add 1 2"}], "prompt"),
    ("prompts", [{"prompt": [U]}], "conversational_prompt"),
])
def test_every_format_reads(tmp_path, kind, rows, fmt):
    p = write(tmp_path, "d.jsonl", rows * 3 + [""])  # a blank line is not a row
    got = F.load(p, kind)
    assert got.format == fmt and len(got.rows) == 3 and not got.skipped
    assert [r["_line"] for r in got.rows] == [1, 2, 3]
    assert got.conversational == fmt.startswith("conversational")


def test_implicit_prompt_pairs_are_split_like_trl(tmp_path):
    p = write(tmp_path, "d.jsonl", [{"chosen": [U, A3], "rejected": [U, A4]}])
    row = F.load(p, "pairs").rows[0]
    assert row["prompt"] == [U] and row["chosen"] == [A3] and row["rejected"] == [A4]


def test_plain_rows_become_conversational():
    assert F.to_conversational({"prompt": "add 1 2", "chosen": "3", "rejected": "4", "_line": 7}) == {
        "prompt": [U], "chosen": [A3], "rejected": [A4]}
    assert F.to_conversational({"prompt": [U], "completion": [A3]}) == {"prompt": [U], "completion": [A3]}
    assert F.prompt_text([{"role": "system", "content": "s"}, U]) == "add 1 2"


@pytest.mark.parametrize("kind,bad,expect", [
    ("pairs", {"prompt": "add 1 2", "chosen": "3"}, "'rejected'"),
    ("pairs", {"prompt": "add 1 2", "chosen": 3, "rejected": "4"}, "field 'chosen'"),
    ("pairs", {"prompt": "add 1 2", "chosen": "", "rejected": "4"}, "empty text"),
    ("pairs", ["add 1 2", "3", "4"], "must be a JSON object"),
    ("pairs", '{"prompt": "add 1 2", "chosen": "3"', "not valid JSON"),
    ("pairs", {"prompt": [U], "chosen": [A3], "rejected": [A4]}, "every row must be"),  # mixed formats
    ("sft_messages", {"messages": [{"role": "bot", "content": "x"}, A3]}, "role must be one of"),
    ("sft_messages", {"messages": [U]}, "no assistant message"),
    ("sft", {"prompt": "add 1 2"}, "'completion'"),
    ("labels", {"pair_id": "p1", "rater_id": "r1", "choice": "maybe"}, "field 'choice'"),
    ("prompts", {"question": "add 1 2"}, "'prompt'"),
])
def test_malformed_row_names_file_line_and_reason(tmp_path, kind, bad, expect):
    good = {"sft": {"prompt": "add 1 2", "completion": "3"}, "sft_messages": {"messages": [U, A3]},
            "pairs": {"prompt": "add 1 2", "chosen": "3", "rejected": "4"},
            "labels": {"pair_id": "p1", "rater_id": "r1", "choice": "b"},
            "prompts": {"prompt": "add 1 2"}}[kind]
    p = write(tmp_path, "bad.jsonl", [good, good, bad, good])
    kind = kind.split("_")[0]
    with pytest.raises(F.DataError) as e:
        F.load(p, kind)
    assert e.value.line == 3 and e.value.path == str(p)
    assert str(e.value).startswith(f"{p}:3: ") and expect in str(e.value), str(e.value)
    # --skip-invalid: the other rows load and the bad one is listed, never silently gone
    got = F.load(p, kind, skip_invalid=True)
    assert len(got.rows) == 3 and [s["line"] for s in got.skipped] == [3] and expect in got.skipped[0]["reason"]
    assert got.report()["skipped"] == 1


def test_empty_or_missing_file_and_label_ids(tmp_path):
    with pytest.raises(F.DataError, match="no such file"):
        F.load(tmp_path / "none.jsonl", "pairs")
    with pytest.raises(F.DataError, match="no valid rows"):
        F.load(write(tmp_path, "empty.jsonl", ["", ""]), "pairs")
    pairs = F.load(write(tmp_path, "p.jsonl", [{"pair_id": "p1", "prompt": "x", "a": "1", "b": "2"}]), "pairs")
    labels = F.load(write(tmp_path, "l.jsonl", [{"pair_id": "p1", "rater_id": "r", "choice": "a"},
                                                {"pair_id": "p9", "rater_id": "r", "choice": "a"}]), "labels")
    with pytest.raises(F.DataError) as e:
        F.check_pair_ids(pairs, labels)
    assert e.value.line == 2 and "'p9'" in str(e.value)


def test_cli_stops_with_the_line_before_training(tmp_path, capsys):
    p = write(tmp_path, "pairs.jsonl", [{"prompt": "add 1 2", "chosen": "3", "rejected": "4"},
                                        {"prompt": "add 1 2", "chosen": "3", "rejected": None}])
    with pytest.raises(SystemExit) as e:
        cli_main(["rm", "--pairs", str(p), "--out", str(tmp_path / "rm"), "--steps", "1"])
    assert f"{p}:2: field 'rejected'" in str(e.value.code)
    assert not (tmp_path / "rm" / "hf").exists()  # nothing trained
    unlabelled = write(tmp_path, "ab.jsonl", [{"pair_id": "p1", "prompt": "x", "a": "1", "b": "2"}])
    with pytest.raises(SystemExit) as e:
        cli_main(["rm", "--pairs", str(unlabelled), "--out", str(tmp_path / "rm2")])
    assert "--labels" in str(e.value.code)


def test_lora_spec_parses_and_rejects():
    from training.base import BaseError, parse_lora

    assert parse_lora(None) is None
    s = parse_lora("8,16")
    assert (s.r, s.alpha, s.targets) == (8, 16.0, ("all-linear",))
    assert parse_lora("16,32,q_proj,v_proj").targets == ("q_proj", "v_proj")
    assert parse_lora("4,8").peft_config().target_modules == "all-linear"
    for bad in ("8", "x,16", "0,16"):
        with pytest.raises(BaseError, match="--lora"):
            parse_lora(bad)


def test_reward_function_spec(tmp_path):
    from training.rewards import RewardSpecError, load_reward_fn

    fn, desc = load_reward_fn("training.task:oracle_rewards")
    assert fn(["add 1 2", [U]], ["3", "4"]).tolist() == [1.0, 0.0]
    for bad, msg in (("nomodule_xyz:f", "cannot import"), ("training.task", "module:function"),
                     (str(tmp_path), "not a reward-model directory")):
        with pytest.raises(RewardSpecError, match=msg):
            load_reward_fn(bad)


def test_rows_trl_would_drop_stop_the_stage(tmp_path, family_checkpoint):
    """A prompt that fills --max-length leaves no completion token; trl drops such rows: the stage refuses."""
    base = family_checkpoint("qwen2", value_head=None)
    rows = [{"prompt": "add 1 2", "completion": "3"}, {"prompt": "copy " + "abc " * 200, "completion": "abc"}]
    p = write(tmp_path, "demos.jsonl", rows * 2)
    with pytest.raises(SystemExit) as e:
        cli_main(["sft", "--base", str(base), "--demos", str(p), "--max-length", "64", "--steps", "1",
                  "--out", str(tmp_path / "sft")])
    assert "2 of 4 rows" in str(e.value.code) and "--max-length" in str(e.value.code)
    with pytest.raises(SystemExit, match="no chat template|no config.json"):
        cli_main(["sft", "--base", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "sft2")])
