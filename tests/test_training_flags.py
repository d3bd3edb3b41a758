"""Every flag a training stage accepts is honoured on the path it takes, or refused with a message (issue 30,
item 7; part 1: the stages and paths the issue names — sft/rm with and without --base, distill tiny and across
sizes, dpo/ppo --policy vs --base, pipeline with and without --base).

Table-driven and fast: the stage's run function is replaced by a recorder, so a run is what the CLI hands it
(the config that lands in metrics.json). A flag is honoured when adding it changes that record; refused when the
CLI exits non-zero with a message naming the flag. Nothing trains here."""

from __future__ import annotations

import json

import pytest

from training import task as T
from training.cli import main as train


class Recorded(Exception):
    pass


RUNS = {  # (stage, path) -> (module, function the CLI calls)
    ("sft", "tiny"): ("training.sft", "run"), ("sft", "base"): ("training.sft", "run_base"),
    ("rm", "tiny"): ("training.reward_model", "run"), ("rm", "base"): ("training.reward_model", "run_base"),
    ("distill", "tiny"): ("training.distill", "run"), ("distill", "base"): ("training.distill", "run_base"),
    ("dpo", "base"): ("training.dpo", "run"), ("ppo", "base"): ("training.ppo", "run"),
    ("eval", "tiny"): ("training.evaluate", "run"),
    ("pipeline", "tiny"): ("training.pipeline", "run"), ("pipeline", "base"): ("training.pipeline_base", "run"),
}

# (stage, path, flag args[, context args given to both runs]): adding the flag changes what the run is given
HONOURED = [
    ("sft", "tiny", ["--batch-size", "7"]),
    ("sft", "base", ["--batch-size", "7"]), ("sft", "base", ["--lora", "4,8"]), ("sft", "base", ["--resume"]),
    ("sft", "base", ["--save-every", "2"]), ("sft", "base", ["--max-length", "64"]),
    ("rm", "tiny", ["--batch-size", "7"]), ("rm", "tiny", ["--lr", "0.01"]), ("rm", "tiny", ["--init", "{base}"]),
    ("rm", "base", ["--batch-size", "7"]), ("rm", "base", ["--lora", "4,8"]), ("rm", "base", ["--resume"]),
    ("rm", "base", ["--save-every", "2"]), ("rm", "base", ["--lr", "0.01"]),
    ("distill", "tiny", ["--steps", "7"]), ("distill", "tiny", ["--batch-size", "7"]),
    ("distill", "tiny", ["--student-size", "nano"]),
    ("distill", "base", ["--steps", "7"]), ("distill", "base", ["--lr", "0.01"]),
    ("distill", "base", ["--prompts", "{prompts}"]), ("distill", "base", ["--lora", "4,8"]),
    ("distill", "base", ["--resume"]), ("distill", "base", ["--save-every", "2"]),
    ("distill", "base", ["--batch-size", "7"]),
    ("pipeline", "tiny", ["--stages", "sft,data,rm"]),
    ("pipeline", "base", ["--aggregate", "mv"], ["--pairs", "{ab_pairs}", "--labels", "{labels}"]),
    ("ppo", "base", ["--target-kl", "2"]), ("ppo", "base", ["--horizon", "50"]), ("ppo", "base", ["--fixed-kl"]),
    ("eval", "tiny", ["--n-prompts", "7"]), ("eval", "tiny", ["--n-prompts", "7"], ["--fast"]),
    ("pipeline", "base", ["--lora", "4,8"]), ("pipeline", "base", ["--demos", "{demos}"]),
]

# (stage, path, flag args, the flag the message names): the CLI refuses them
REFUSED = [
    ("sft", "tiny", ["--lora", "4,8"], "--lora"), ("sft", "tiny", ["--resume"], "--resume"),
    ("sft", "tiny", ["--save-every", "2"], "--save-every"), ("sft", "tiny", ["--max-length", "64"], "--max-length"),
    ("sft", "base", ["--size", "small"], "--size"),
    ("rm", "tiny", ["--lora", "4,8"], "--lora"), ("rm", "tiny", ["--resume"], "--resume"),
    ("rm", "tiny", ["--save-every", "2"], "--save-every"),
    ("rm", "base", ["--init", "{base}"], "--init"),
    ("distill", "tiny", ["--base", "{base}"], "--base"), ("distill", "base", ["--base", "{base}"], "--base"),
    ("distill", "tiny", ["--lr", "0.01"], "--lr"), ("distill", "tiny", ["--prompts", "{prompts}"], "--prompts"),
    ("distill", "tiny", ["--lora", "4,8"], "--lora"), ("distill", "tiny", ["--resume"], "--resume"),
    ("distill", "tiny", ["--save-every", "2"], "--save-every"),
    ("distill", "tiny", ["--skip-invalid"], "--skip-invalid"),
    ("distill", "base", ["--student-size", "nano"], "--student-size"),
    ("dpo", "base", ["--policy", "{base}"], "--policy"), ("ppo", "base", ["--policy", "{base}"], "--policy"),
    ("pipeline", "base", ["--stages", "rm,dpo"], "--stages"),
    ("pipeline", "tiny", ["--pairs", "{pairs}"], "--pairs"), ("pipeline", "tiny", ["--demos", "{demos}"], "--demos"),
    ("pipeline", "tiny", ["--labels", "{pairs}"], "--labels"), ("pipeline", "tiny", ["--lora", "4,8"], "--lora"),
    ("pipeline", "tiny", ["--skip-invalid"], "--skip-invalid"),
    ("pipeline", "tiny", ["--aggregate", "mv"], "--aggregate"),
    ("ppo", "base", ["--rm", "{dir}"], "--rm"),
    ("ppo", "base", ["--fixed-kl", "--target-kl", "2"], "--target-kl"),
    ("ppo", "base", ["--fixed-kl", "--horizon", "50"], "--horizon"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, family_checkpoint):
    d = tmp_path_factory.mktemp("flags")
    exs = T.make_examples(24, seed=2)

    def jsonl(name, rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(d / name)

    return {
        "base": str(family_checkpoint("llama3", value_head=None)), "dir": d,
        "pairs": jsonl("pairs.jsonl", [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.answer + " !"}
                                       for e in exs]),
        "prompts": jsonl("prompts.jsonl", [{"prompt": e.prompt} for e in exs]),
        "demos": jsonl("demos.jsonl", [{"prompt": e.prompt, "completion": e.answer} for e in exs]),
        "ab_pairs": jsonl("ab_pairs.jsonl", [{"pair_id": str(i), "prompt": e.prompt, "a": e.answer, "b": e.answer + " !"}
                                             for i, e in enumerate(exs)]),
        # three raters who disagree on every third pair: majority vote and Dawid-Skene resolve them differently
        "labels": jsonl("labels.jsonl", [{"pair_id": str(i), "rater_id": f"r{j}", "choice": "b" if (i + j) % 3 == 0 else "a"}
                                         for i in range(len(exs)) for j in range(3)]),
    }


def _argv(stage: str, path: str, f: dict) -> list[str]:
    base = ["--base", f["base"]] if path == "base" else []
    return {
        "sft": ["sft", *base],
        "rm": ["rm", *base, "--pairs", f["pairs"]],
        "distill": (["distill", "--teacher", f["base"], "--student-config", '{"num_hidden_layers": 1}']
                    if path == "base" else ["distill", "--teacher", str(f["dir"] / "no-teacher")]),
        "dpo": ["dpo", *base, "--pairs", f["pairs"]],
        "ppo": ["ppo", *base, "--reward", "training.task:oracle_rewards"],
        "pipeline": ["pipeline", *base, *(["--pairs", f["pairs"]] if path == "base" else [])],
        "eval": ["eval", "--candidate", f["base"], "--incumbent", f["base"]],
    }[stage]


def _record(monkeypatch, stage, path, argv, f) -> str:
    import importlib

    mod, fn = RUNS[(stage, path)]

    def rec(*a, **kw):
        raise Recorded(repr((a[1:], {k: v for k, v in kw.items() if k != "stage"})))  # a[0]: the out dir

    monkeypatch.setattr(importlib.import_module(mod), fn, rec)
    with pytest.raises(Recorded) as e:
        train([*argv, "--out", str(f["dir"] / "out"), "--seed", "0"])
    return str(e.value)


def _fill(args, f):
    return [a.format(**f) if a.startswith("{") else a for a in args]


def test_the_table_covers_the_issues_pairs():
    named = {("distill", "--base"), ("sft", "--lora"), ("sft", "--resume"), ("sft", "--save-every"),
             ("sft", "--batch-size"), ("rm", "--lora"), ("rm", "--resume"), ("rm", "--save-every"),
             ("rm", "--batch-size"), ("distill", "--steps"), ("distill", "--lr"), ("distill", "--prompts"),
             ("distill", "--lora"), ("distill", "--resume"), ("rm", "--init"), ("dpo", "--policy"),
             ("ppo", "--policy"), ("pipeline", "--stages")}
    walked = {(h[0], h[2][0]) for h in HONOURED} | {(s, a[0]) for s, _, a, _ in REFUSED}
    assert named <= walked


@pytest.mark.parametrize("stage,path,flag,context", [(*h, [])[:4] for h in HONOURED],
                         ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_flag_is_honoured(monkeypatch, files, stage, path, flag, context):
    argv = [*_argv(stage, path, files), *_fill(context, files)]
    without = _record(monkeypatch, stage, path, argv, files)
    with_flag = _record(monkeypatch, stage, path, [*argv, *_fill(flag, files)], files)
    assert with_flag != without, f"{stage} ({path}): {flag} changes nothing the run is given"


@pytest.mark.parametrize("stage,path,flag,name", REFUSED, ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_flag_is_refused_with_its_name(monkeypatch, files, stage, path, flag, name):
    import importlib

    mod, fn = RUNS[(stage, path)]
    ran = []
    monkeypatch.setattr(importlib.import_module(mod), fn, lambda *a, **kw: ran.append(1) or {})
    with pytest.raises(SystemExit) as e:
        train([*_argv(stage, path, files), *_fill(flag, files), "--out", str(files["dir"] / "out")])
    assert not ran and e.value.code not in (0, None)
    assert name in str(e.value.code), e.value.code
