"""Gateway configuration: environment variables (`ALIGNGATE_*`) over a YAML file over defaults.

Every knob has a default that runs the embedded tiny model on loopback. A YAML file is named by
`ALIGNGATE_CONFIG` (or `aligngate serve --config`); nested fields use `__` in env vars, e.g.
`ALIGNGATE_LIMITS__MAX_N=4`. Versions are a list, so they come from YAML or one JSON env var
(`ALIGNGATE_VERSIONS='[{"name": "stable", "model": "/models/v1", "weight": 1}]'`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aligngate"


class VersionSpec(BaseModel):
    """One policy version: a local HF model directory (in-process vLLM) or a remote vLLM server."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str | None = Field(None, description="HF model directory served in-process by vLLM")
    url: str | None = Field(None, description="base URL of a remote OpenAI-compatible vLLM server, e.g. http://h:8000")
    urls: list[str] = Field(default_factory=list, description="more backends of the same remote version (with or "
                            "instead of `url`): least-in-flight choice, one retry on another before the first byte")
    remote_model: str | None = Field(None, description="model name on the remote server (default: its first model)")
    value_slots: list[int] | None = Field(
        None, min_length=2, max_length=3,
        description="remote only: the upstream policy's reserved value slots [a, b] or [a, b, c] (config.json "
                    "`aligngate.value_slots`, or its <|value_a|>/<|value_b|> token ids). The upstream must serve the "
                    "value-head class: vLLM with aligngate installed and --hf-overrides "
                    "'{\"architectures\": [\"<Arch>WithValueHead\"]}' (e.g. Qwen2ForCausalLMWithValueHead; "
                    "serve.vllm_ext.vllm_model.BASES lists the families). Then remote answers carry the "
                    "in-pass reward too.")
    remote_api_key: str | None = None
    tool_strict_level: Literal["parameter", "function", "auto"] = Field(
        "parameter", description="in-process: vLLM's --tool-strict-level. parameter: every call's arguments are "
                                 "constrained to its tool's schema, as if each tool were strict (a valid call even "
                                 "from a weak model); function: the call envelope only; auto: vLLM's default (the "
                                 "arguments of tools marked strict)")
    structured_outputs_backend: Literal["xgrammar", "guidance", "auto"] = Field(
        "xgrammar", description="in-process: vLLM's backend for response_format and forced tool calls; xgrammar and "
                                "guidance write JSON without free whitespace, auto is vLLM's choice (serve/api/structured.py)")
    tool_parser: str | None = Field(None, description="in-process: vLLM tool parser reading this version's tool calls "
                                    "(hermes, llama3_json, mistral, ...); default from the chat template's call syntax "
                                    "(serve/api/tools.py), `none` refuses tools. Remote versions: the upstream's "
                                    "--tool-call-parser decides")
    weight: float = Field(0.0, ge=0.0)
    max_model_len: int | None = Field(None, ge=8, description="context length (default: the model's own, config.json max_position_embeddings, as vLLM reads it)")
    dtype: str = "float32"
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE in GiB for this engine (CPU only)")
    start_timeout_s: float | None = Field(None, gt=0, description="this version's engine start deadline (default: "
                                          "engine_start_timeout_s); a bigger model may need more")
    max_num_seqs: int = Field(128, ge=1)
    enforce_eager: bool = True
    max_concurrency: int | None = Field(None, ge=1, description="requests in flight on this version (default: "
                                                                "limits.max_concurrency)")
    max_queue: int | None = Field(None, ge=0, description="requests waiting for a slot (default: limits.max_queue)")
    # reward-guided serving (issue 20): serve/rewards/best_of.py, serve/rewards/reward_floor.py
    best_of: int = Field(1, ge=1, description="candidates sampled per request when the request gives no `best_of` "
                                              "(the one with the highest in-pass reward is returned)")
    best_of_max: int = Field(8, ge=1, description="largest `best_of` a request may ask for on this version (400 above)")
    best_of_adaptive: bool = Field(True, description="k shrinks towards 1 as the version's admission slots fill "
                                   "(serve/rewards/best_of.py effective_k); false: always the k asked for")
    best_of_rule: Literal["max", "max_length_guard"] = Field(
        "max", description="max: the highest reward; max_length_guard: the highest among candidates no longer than "
                           "best_of_length_ratio x the candidates' median length (length hacking of the value head)")
    best_of_length_ratio: float = Field(1.5, gt=1.0)
    best_of_audit_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of best-of-n choices (k > 1) "
                                          "scored by the audit reward model (the over-optimisation cross-check)")
    best_of_audit_gap_max: float = Field(0.3, gt=0.0, description="alarm when the mean (value - audit) gap of the "
                                         "audited choices, both on 0-1, exceeds this")
    reward_floor: float | None = Field(None, description="an answer whose in-pass reward (the value's own scale) is "
                                       "below this is regenerated on `fallback_version` (non-stream requests)")
    reward_floor_source: Literal["value", "audit"] = Field(
        "value", description="what the floor is compared with: the in-pass value (free; its own scale) or the audit "
                             "reward model's 0-1 score of the answer (waited for, audit_wait_timeout_s at most; needs "
                             "audit_model_dir). A policy that hacked its reward model has a value head that likes its "
                             "own bad answers: only the audit floor catches it")
    fallback_version: str | None = Field(None, description="where floor hits are regenerated (default: stable)")
    fallback_budget_s: float = Field(10.0, gt=0, description="longest wait for the fallback answer; past it the "
                                     "original answer is returned, marked as such")
    fallback_share_max: float | None = Field(0.2, ge=0.0, le=1.0, description="canary gate input: an alarm (so no "
                                             "promotion) while more than this share of the version's answers fell "
                                             "back (at least 10 answers in the last 10 minutes); null: off")

    @model_validator(mode="after")
    def _best_of_in_range(self) -> "VersionSpec":
        if self.best_of > self.best_of_max:
            raise ValueError(f"version {self.name!r}: best_of ({self.best_of}) exceeds best_of_max ({self.best_of_max})")
        return self

    @model_validator(mode="after")
    def _one_backend(self) -> "VersionSpec":
        if self.url is None and self.urls:
            self.url = self.urls[0]  # `url` stays the version's first backend for code that reads only it
        if bool(self.model) == bool(self.url):
            raise ValueError(f"version {self.name!r}: give exactly one of `model` (local dir) or `url`/`urls` (remote)")
        return self

    def backend_urls(self) -> list[str]:
        return list(dict.fromkeys([u for u in (self.url, *self.urls) if u]))


class AdaptiveLimits(BaseModel):
    """Latency-bounded admission per version (serve/admission/adaptive.py): the concurrency limit adapts to keep the time
    per output token within `tolerance` x the version's low-load TPOT (and the engine's own TTFT within
    `ttft_tolerance` x its low-load value), and a queued request waits at most
    `queue_wait_share` x the recent median decode time (E2E - TTFT) before a 503."""

    tolerance: float = Field(1.2, gt=1.0, description="recent TPOT / baseline TPOT above which the limit shrinks")
    ttft_tolerance: float = Field(2.0, gt=1.0, description="the same for the engine's TTFT (queue wait left out)")
    min_concurrency: int = Field(8, ge=1, description="the limit never goes below this (lower holds latency tighter "
                                                      "where a step's cost grows with the batch, as on CPU, but "
                                                      "refuses more while it recovers from an overload)")
    queue_wait_share: float = Field(0.1, gt=0, description="longest queue wait, as a share of the median decode time")


class Limits(BaseModel):
    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_n: int = 8
    max_stop: int = 4
    max_top_logprobs: int = 20
    max_tokens_cap: int | None = Field(None, ge=1, description="largest max_tokens a request may ask for (400 above "
                                                               "it); also the default when a request gives none")
    max_prompt_tokens: int | None = Field(None, ge=1, description="longest prompt in tokens (400 above it)")
    max_concurrency: int = Field(256, ge=1, description="per version: requests in flight (engine side)")
    max_queue: int = Field(512, ge=0, description="per version: requests waiting for a slot; beyond it 503")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a slot before a 503")
    adaptive: AdaptiveLimits | None = Field(None, description="latency-bounded admission (off: a plain bounded "
                                                              "FIFO); e.g. `adaptive: {}` for the defaults")
    request_timeout_s: float = Field(600.0, gt=0, description="whole request, queue wait included: 504 before "
                                                              "the first byte, an in-band error event after it")
    lease_ttl_s: float = Field(30.0, ge=3, description="a concurrency slot held in Redis expires this long after "
                                                      "its replica last renewed it (a crashed replica's slots)")


class ApiKeySpec(BaseModel):
    """One inference API key. Give the key itself (hashed at load, never kept) or its hex SHA-256.

    Limits are per key id, across all replicas when `redis_url` is set; none given = unlimited.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", description="shown in logs, metrics and 429s")
    key: SecretStr | None = Field(None, description="the key in plain text (hashed at load)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute: prompt + max_tokens reserved at admission, "
                                                    "corrected to actual usage at the end")
    max_concurrency: int | None = Field(None, ge=1, description="requests in flight at once")

    @model_validator(mode="after")
    def _one_secret(self) -> "ApiKeySpec":
        if bool(self.key) == bool(self.sha256):
            raise ValueError(f"api key {self.id!r}: give exactly one of `key` (plain text) or `sha256` (its hash)")
        return self


class CanarySettings(BaseModel):
    """Rollout plan defaults and gate thresholds (see serve/rollout/canary.py for what each gate means)."""

    stages: list[float] = Field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0], description="canary share per stage")
    min_requests: int = Field(200, ge=0, description="canary requests a stage needs before it can pass")
    min_duration_s: float = Field(300.0, ge=0, description="seconds a stage lasts at least")
    auto_advance: bool = True
    tick_s: float = Field(0.5, gt=0, description="controller period: store sync and gate evaluation")
    window_s: float = Field(600.0, gt=0, description="the gate looks at most this far back")
    latency_ratio: float = 1.2
    latency_slack_s: float = Field(0.01, ge=0, description="absolute allowance added to the latency limits")
    error_margin: float = 0.01
    gate_alpha: float = Field(0.05, description="level of the one-sided error-rate and p99 tests at a stage end")
    reward_alpha: float = 0.05
    reward_alpha_early: float = 0.001
    reward_margin: float = 0.02
    reward_min_samples: int = 10
    breach_min_requests: int = Field(10, ge=1, description="canary requests before an early rollback can fire")
    drain_timeout_s: float = 30.0
    rollback_on_engine_death: bool = Field(True, description="the canary's engine died during a rollout: roll back")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNGATE_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    public_model: str = Field("aligngate", description="the model name that lets the router pick the version")
    versions: list[VersionSpec] = Field(default_factory=list, description="empty = the embedded tiny default")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    limits: Limits = Field(default_factory=Limits)
    ready_timeout_s: float = 20.0
    retry_after_s: int = 5
    remote_timeout_s: float = 300.0
    remote_connect_timeout_s: float = 5.0
    remote_header_timeout_s: float = Field(15.0, gt=0, description="a remote backend that sends no response headers "
                                           "within this is treated as down (the request is retried on another)")
    supervise_interval_s: float = Field(1.0, gt=0, description="engine liveness check period (serve/engines/supervisor.py)")
    restart_backoff_s: float = Field(1.0, ge=0, description="wait before re-trying a failed engine restart (doubles)")
    restart_backoff_max_s: float = Field(60.0, ge=0)
    engine_start_timeout_s: float = Field(300.0, gt=0, description="deadline of one in-process engine start (build "
                                          "+ warm-up); past it its processes are killed, the version is reported "
                                          "`failed` and the start is retried after restart_backoff_s (doubling)")
    engine_start_retries: int = Field(3, ge=0, description="retries of an engine start that passed its deadline")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM: bound on the wait for in-flight requests")
    drain_grace_s: float = Field(0.0, ge=0, description="on SIGTERM: keep answering 503 (and /ready 503) at least "
                                 "this long before closing the listener, so a load balancer sees it first")
    reward_position: Literal["last", "eos"] = Field(
        "last", description="last: in-pass value at the final generated position (free); eos: OpenRLHF-style "
                            "value at the EOS position (one extra 1-token step)")
    hard_constraint_phrases: list[str] = Field(default_factory=lambda: ["I love you"],
                                               description="an answer containing one goes to the review queue")
    review_path: Path | None = Field(None, description="review queue JSONL (default cache_dir/review.jsonl; "
                                                       "a Redis list when redis_url is set)")
    feedback_dir: Path | None = Field(None, description="feedback JSONL directory (default cache_dir/feedback)")
    audit_model_dir: Path | None = Field(None, description="audit reward model (training's RM export); none = off")
    audit_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of answers the audit model scores")
    audit_wait_timeout_s: float = Field(5.0, gt=0, description="longest a `wait_for_audit` request waits for the "
                                                               "audit score (then `aligngate.audit` is null)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    log_content: bool = Field(False, description="log prompt and answer text (one `answer` line per choice); off by "
                                                 "default: the gateway never logs what users send or get")
    config: Path | None = Field(None, description="YAML config file (also ALIGNGATE_CONFIG)")
    admin_key: str | None = Field(None, description="key for /admin/ (none: one is generated into cache_dir/admin_key)")
    admin_keys: dict[str, str] = Field(default_factory=dict, description="more admin keys: {key id: key}")
    api_keys: list[ApiKeySpec] = Field(default_factory=list, description="inference keys (none: /v1/ is open, "
                                                                      "allowed on loopback only unless allow_open)")
    allow_open: bool = Field(False, description="serve /v1/ without keys on a non-loopback address (not advised)")
    redis_url: str | None = Field(None, description="control-plane store shared by replicas (default: in memory)")
    redis_prefix: str = "aligngate"
    canary: CanarySettings = Field(default_factory=CanarySettings)
    allow_fault_injection: bool = Field(False, description="test only: enables POST /admin/versions/{v}/fault")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = init_settings.init_kwargs.get("config") or os.environ.get("ALIGNGATE_CONFIG")  # type: ignore[attr-defined]
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise FileNotFoundError(f"config file not found: {yaml_path}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _unique_names(self) -> "Settings":
        names = [v.name for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"version names must be unique, got {names}")
        if self.public_model in names:
            raise ValueError(f"public_model {self.public_model!r} must differ from every version name")
        ids = [k.id for k in self.api_keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"api key ids must be unique, got {ids}")
        return self


def embedded_versions(cache_dir: Path) -> list[VersionSpec]:
    """The embedded default: two tiny local policies, `stable` (all traffic) and `canary` (weight 0)."""
    root = cache_dir / "models"
    return [
        VersionSpec(name="stable", model=str(root / "default-stable"), weight=1.0),
        VersionSpec(name="canary", model=str(root / "default-canary"), weight=0.0),
    ]
