"""One load run: `Load` (rate, prompts, shape, dataset) and `run_load`, which sends it to a URL through vLLM's
`vllm bench serve` machinery and returns the run's summary (`benchmarks.run_metrics.summarise`).

Load: always vLLM's own load generator (`vllm.benchmarks.serve`, open-loop Poisson arrivals, fixed seed), run
in this process through `benchmarks.vllm_bench` (importing vLLM once instead of once per run). Datasets:
`random` (vLLM's random token prompts, `/v1/completions`) and `chat` (chat-shaped user turns written to a JSONL
file and sent through vLLM's `custom` dataset to `/v1/chat/completions`, the server applying the chat template).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.profiles import PUBLIC_MODEL
from benchmarks.run_metrics import METRICS, PERCENTILES, summarise


@dataclass
class Load:
    rate: float
    num_prompts: int
    input_len: int
    output_len: int
    seed: int = 0
    dataset: str = "random"  # random | chat
    temperature: float | None = None
    label: str = ""

    def describe(self) -> str:
        shape = (f"random {self.input_len}-in" if self.dataset == "random" else "chat-shaped turns (custom JSONL)")
        t = "" if self.temperature is None else f", temperature {self.temperature}"
        rate = "burst (rate inf)" if math.isinf(self.rate) else f"{self.rate:g} req/s Poisson"
        return (f"vllm bench serve: {shape}/{self.output_len}-out, ignore_eos, {self.num_prompts} prompts, "
                f"{rate}, seed {self.seed}{t}")


CHAT_TOPICS = ["What is {a}+{b}?", "Reverse the word '{w}'.", "Is {a} larger than {b}? Answer yes or no.",
               "Spell '{w}' backwards, then give its length.", "Add {a} and {b}, then double it.",
               "Write one short sentence about {w}.", "Compute {a}-{b} and explain in one line."]
WORDS = ["reward", "policy", "canary", "gateway", "vector", "kernel", "token", "stable", "latency", "river"]


def chat_dataset(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """Chat-shaped user turns (short task questions, like the default task's), one JSON line each; a file per
    seed, so a new seed brings new questions (the `cache` scenario's cold passes need them)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            q = rng.choice(CHAT_TOPICS).format(a=rng.randint(0, 99), b=rng.randint(0, 99), w=rng.choice(WORDS))
            if rng.random() < 0.3:
                q = "You are a careful assistant. " + q
            q = f"Question {i + 1} of session {seed}: {q}"  # every prompt distinct, within and across seeds
            f.write(json.dumps({"prompt": q}) + "\n")
    return path


_BENCH_READY = False


def _bench(argv: list[str], capture: Path) -> dict:
    """vLLM's `vllm bench serve` in this process (the capture hook installed once)."""
    global _BENCH_READY
    from benchmarks import vllm_bench

    if not _BENCH_READY:
        vllm_bench.RECORDS = vllm_bench._install_capture(str(capture))
        _BENCH_READY = True
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    vllm_bench.RECORDS.clear()
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    with open(capture.with_suffix(".log"), "w") as log, contextlib.redirect_stdout(log):  # vLLM's own report
        bench_main(parser.parse_args(argv))
    with open(capture, "w") as f:
        for rec in vllm_bench.RECORDS:
            f.write(json.dumps(rec) + "\n")
    return {}


def run_load(url: str, load: Load, tokenizer: str, work: Path, tag: str, slo_ms: dict[str, float],
             reward_floor: float, endpoint_model: str = PUBLIC_MODEL) -> dict:
    """One `vllm bench serve` run against `url`; returns the run's summary (see `summarise`)."""
    out_dir = work / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9._+-]+", "_", tag)
    fname = f"{tag}.json"
    argv = ["--base-url", url, "--model", tokenizer, "--served-model-name", endpoint_model, "--tokenizer", tokenizer,
            "--num-prompts", str(load.num_prompts), "--request-rate", str(load.rate), "--seed", str(load.seed),
            "--ignore-eos", "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", ",".join(PERCENTILES),
            "--goodput", *[f"{k}:{v:g}" for k, v in slo_ms.items()], "--save-result", "--save-detailed",
            "--result-dir", str(out_dir), "--result-filename", fname, "--disable-tqdm",
            "--ready-check-timeout-sec", "0"]
    if load.dataset == "chat":
        data = chat_dataset(work / f"chat_prompts_{load.seed}.jsonl", seed=load.seed)
        argv += ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "custom",
                 "--dataset-path", str(data), "--custom-output-len", str(load.output_len), "--skip-chat-template"]
    else:
        argv += ["--backend", "vllm", "--endpoint", "/v1/completions", "--dataset-name", "random",
                 "--random-input-len", str(load.input_len), "--random-output-len", str(load.output_len)]
    if load.temperature is not None:
        argv += ["--temperature", str(load.temperature)]
    capture = out_dir / f"{tag}.capture.jsonl"
    _bench(argv, capture)
    r = json.loads((out_dir / fname).read_text())
    recs = [json.loads(x) for x in capture.read_text().splitlines() if x.strip()]
    return summarise(r, recs, slo_ms, reward_floor)
