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

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aligngate"


class VersionSpec(BaseModel):
    """One policy version: a local HF model directory (in-process vLLM) or a remote vLLM server."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str | None = Field(None, description="HF model directory served in-process by vLLM")
    url: str | None = Field(None, description="base URL of a remote OpenAI-compatible vLLM server, e.g. http://h:8000")
    remote_model: str | None = Field(None, description="model name on the remote server (default: its first model)")
    remote_api_key: str | None = None
    weight: float = Field(0.0, ge=0.0)
    max_model_len: int = Field(512, ge=8)
    dtype: str = "float32"
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE in GiB for this engine (CPU only)")
    max_num_seqs: int = Field(128, ge=1)
    enforce_eager: bool = True

    @model_validator(mode="after")
    def _one_backend(self) -> "VersionSpec":
        if bool(self.model) == bool(self.url):
            raise ValueError(f"version {self.name!r}: give exactly one of `model` (local dir) or `url` (remote)")
        return self


class Limits(BaseModel):
    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_n: int = 8
    max_stop: int = 4
    max_top_logprobs: int = 20


class CanarySettings(BaseModel):
    """Rollout plan defaults and gate thresholds (see serve/canary.py for what each gate means)."""

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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    config: Path | None = Field(None, description="YAML config file (also ALIGNGATE_CONFIG)")
    admin_key: str | None = Field(None, description="key for /admin/ (none: one is generated into cache_dir/admin_key)")
    admin_keys: dict[str, str] = Field(default_factory=dict, description="more admin keys: {key id: key}")
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
        return self


def embedded_versions(cache_dir: Path) -> list[VersionSpec]:
    """The embedded default: two tiny local policies, `stable` (all traffic) and `canary` (weight 0)."""
    root = cache_dir / "models"
    return [
        VersionSpec(name="stable", model=str(root / "default-stable"), weight=1.0),
        VersionSpec(name="canary", model=str(root / "default-canary"), weight=0.0),
    ]
