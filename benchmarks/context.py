"""What every benchmark scenario gets: the run's context (`Ctx`: profile, model, work dir, the processes it
started) with the helpers that start the compared systems, and `Skip` for a scenario that cannot run here."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness as H
from benchmarks.procs import Proc, start_aligngate, start_vllm_server


class Skip(Exception):
    """The scenario cannot run here (e.g. LiteLLM would not install); the message says why."""


@dataclass
class Ctx:
    scenario: str
    prof: H.Profile
    smoke: bool
    model: str
    out: Path
    argv: list[str]
    dataset: str = "random"
    vllm_urls: list[str] = field(default_factory=list)
    engine: str = "local"
    vllm_servers: int = 1
    reward_off: bool = False  # vs-vllm: serve the weights without the value head (the gateway alone, no reward)
    admission: str = "adaptive"  # overload: limits.adaptive on (latency-bounded) or the plain bounded FIFO
    adaptive: str = "{}"  # overload: the limits.adaptive settings (JSON)
    exclusive: bool = False  # one engine-backed system resident at a time (GPU profiles: engines can't share it)
    upstream_model: str = H.PUBLIC_MODEL  # the model name the vLLM server(s) serve
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aligngate-bench-")))
    procs: list[Proc] = field(default_factory=list)

    def load(self, rate: float, n: int | None = None, **kw) -> H.Load:
        return H.Load(rate=rate, num_prompts=n or self.prof.num_prompts, input_len=self.prof.input_len,
                      output_len=self.prof.output_len, dataset=self.dataset, **kw)

    def engine_fields(self) -> dict:
        p = self.prof
        return {"max_num_seqs": p.max_num_seqs, "dtype": p.dtype, "max_model_len": p.max_model_len,
                "enforce_eager": p.enforce_eager}

    def server_kwargs(self) -> dict:
        p = self.prof
        # --disable-log-stats: aligngate's in-process engine runs with vLLM's stats logging off
        # (serve/engines/engine_vllm.py), so vLLM's own server does too: the same engine settings on both sides
        return {"dtype": p.dtype, "max_model_len": p.max_model_len, "enforce_eager": p.enforce_eager,
                "extra": [*p.server_extra, "--disable-log-stats"]}

    def vllm_server(self, name: str = "vllm") -> str:
        kw = self.server_kwargs()
        proc, url = start_vllm_server(name, self.work, self.model, H.PUBLIC_MODEL, "--max-num-seqs",
                                      str(self.prof.max_num_seqs), *kw.pop("extra"), **kw)
        self.procs.append(proc)
        return url

    def upstreams(self, n: int) -> list[str]:
        """The vLLM server(s) remote-mode systems sit in front of: the given URLs, or n started here."""
        if self.vllm_urls:
            import httpx

            self.upstream_model = httpx.get(self.vllm_urls[0] + "/v1/models", timeout=30).json()["data"][0]["id"]
            return self.vllm_urls
        return [self.vllm_server(f"vllm-{i}") for i in range(n)]

    def start_gateway(self, name: str, versions: list[dict], **env: str) -> tuple[str, list[Proc]]:
        proc, url = start_aligngate(name, self.work, env=H.gateway_env(versions, self.work, name, **env))
        return url, [proc]

    def gateway(self, name: str, versions: list[dict], **env: str) -> str:
        url, procs = self.start_gateway(name, versions, **env)
        self.procs.extend(procs)
        return url

    def systems(self, starters: dict) -> dict:
        """name -> starter () -> (url, procs). Started (and warmed) now, or — exclusive mode — wrapped in
        `Launcher`s that `H.alternate` starts one at a time."""
        if self.exclusive:
            return {n: H.Launcher(f, warm=lambda url, n=n: self.warm({n: url})) for n, f in starters.items()}
        out = {}
        for n, f in starters.items():
            url, procs = f()
            self.procs.extend(procs)
            out[n] = url
        self.warm(out)
        return out

    def warm(self, systems: dict[str, str]) -> None:
        """A few requests per system first (one-off costs: connections, compiled paths, allocator)."""
        load = self.load(10.0, 4 if self.smoke else 16, seed=12345)
        for name, url in systems.items():
            s = H.run_load(url, load, self.model, self.work, f"warm-{name}", self.prof.slo_ms, self.prof.reward_floor)
            if not s["completed"]:  # a system that answers nothing would only produce a table of zeros
                import httpx

                r = httpx.post(url + "/v1/completions", json={"model": H.PUBLIC_MODEL, "prompt": "1+1=",
                                                              "max_tokens": 4}, timeout=60,
                               headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"})
                raise RuntimeError(f"{name} ({url}) failed every warm-up request {s['status_counts']}; "
                                   f"one more: {r.status_code} {r.text[:500]}")

    def result(self, systems: dict, baseline: str, descriptions: dict[str, str]) -> dict:
        r = H.new_result(self.scenario, self.prof, self.smoke, self.model, descriptions, baseline, self.argv)
        r["urls"] = {n: u for n, u in systems.items() if isinstance(u, str)}
        r["one_system_at_a_time"] = self.exclusive
        r["engine_settings"] = {  # both sides' engine settings, so a reader can check they match
            "aligngate_version": {**self.engine_fields(), "log_stats": False},
            "vllm_server": {**self.server_kwargs(), "max_num_seqs": self.prof.max_num_seqs, "log_stats": False}}
        return r

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
