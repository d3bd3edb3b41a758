"""The systems the `vs-vllm` and `reward` scenarios compare (`start_systems`), and the same weights without the
value head (`without_value_head`: what "reward off" serves)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.procs import start_aligngate, start_vllm_server


def without_value_head(model: str, work: Path) -> str:
    """The same weights with no value head: what "reward off" serves."""
    dst = work / "model-no-value-head"
    if not dst.exists():
        shutil.copytree(model, dst, ignore=shutil.ignore_patterns("value_head"))
        cfg = json.loads((dst / "config.json").read_text())
        cfg.pop("aligngate", None)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(dst)


def start_systems(scenario: str, model: str, work: Path, reward_off: bool = False, engine: dict | None = None,
                  server: dict | None = None, only: set[str] | None = None) -> tuple[dict[str, str], list, str]:
    """name -> base URL, the processes, and the baseline system's name. All serve the public model `policy`.
    `engine` overrides the aligngate version's engine fields (dtype, max_num_seqs, ...), `server` the matching
    `start_vllm_server` keywords (`python -m benchmarks --profile ...` passes both; the defaults are the CPU ones);
    `only` starts just those systems (one engine resident at a time on a GPU)."""
    procs, systems = [], {}
    engine = engine or {"max_num_seqs": 128}
    server = server or {}

    def gateway(name: str, model_dir: str, **env: str) -> None:
        if only is not None and name not in only:
            return
        versions = [{"name": "stable", "model": model_dir, "weight": 1, **engine}]
        proc, url = start_aligngate(name, work, env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                                     "ALIGNGATE_PUBLIC_MODEL": "policy",
                                                     "ALIGNGATE_CACHE_DIR": str(work / name), **env})
        procs.append(proc)
        systems[name] = url

    if scenario == "vs-vllm":
        if only is None or "vllm" in only:
            extra = [x for x in server.pop("extra", []) if x != "--disable-log-stats"]
            # --disable-log-stats: aligngate's in-process engine runs with vLLM's stats logging off, so vLLM's
            # server does too (the same engine settings on both sides)
            proc, url = start_vllm_server("vllm", work, model, "policy", "--max-num-seqs",
                                          str(engine.get("max_num_seqs", 128)), *extra, "--disable-log-stats",
                                          **server)
            procs.append(proc)
            systems["vllm"] = url
        gateway("aligngate", without_value_head(model, work) if reward_off else model)
        return systems, procs, "vllm"
    if scenario == "reward":
        gateway("reward-off", without_value_head(model, work))
        gateway("reward-on", model)
        gateway("second-pass", model, ALIGNGATE_REWARD_POSITION="eos")
        return systems, procs, "reward-off"
    raise SystemExit(f"unknown scenario {scenario!r}")
