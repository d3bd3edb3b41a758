"""The one small interface every policy version sits behind, and the plain data that crosses it.

Two implementations: `serve.engines.engine_vllm.VLLMEngine` (in-process `AsyncLLM`, the embedded default) and
`serve.engines.engine_remote.RemoteEngine` (an OpenAI-compatible vLLM server by URL, the scale-out path).
The HTTP layer turns `Step`s into OpenAI JSON; engines never see HTTP.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal


class EngineError(Exception):
    """The engine failed on a request that was valid (dead engine, upstream 5xx, ...): a 5xx for the client."""

    kind = "engine_error"


class EngineNotReady(EngineError):
    kind = "engine_not_ready"


class EngineBadRequest(Exception):
    """The engine refused the request as invalid (prompt too long for the context, ...): a 400 for the client."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    kind: Literal["chat", "completion"]
    messages: list[dict] | None = None  # chat, OpenAI wire form: {"role", "content", "tool_calls", "tool_call_id"}
    prompt: str | None = None  # completion
    max_tokens: int | None = None  # None = up to the context length
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None  # None = off; k >= 0 = chosen token plus k alternatives
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    echo: bool = False  # completions only
    with_values: bool = True  # read the in-pass value/entropy when the version has a value head
    ignore_eos: bool = False
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    stream: bool = False  # the client streams: tool calls are parsed as they come (else once, at the end)
    logit_bias: dict[int, float] | None = None  # token id -> bias in [-100, 100] (the value slots' -100 wins)
    response_format: dict | None = None  # chat, OpenAI wire form (serve.api.structured); None = free text
    tools: list[dict] | None = None  # chat, OpenAI wire form (serve.api.tools)
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Delta:
    """New output of one choice since the previous step."""

    index: int
    text: str
    num_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    values: list[float] | None = None  # in-pass value per new token: V(prompt + response before that token)
    entropies: list[float] | None = None  # entropy of the served distribution per new token
    tool_calls: list[dict] | None = None  # OpenAI tool-call deltas ({"index", "id", "type", "function"}), chat only


@dataclass(slots=True)
class Step:
    deltas: list[Delta]
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative over all choices
    finished: bool = False
    prompt_token_ids: list[int] | None = None  # on the final step, for a reward finalize step


class Engine(abc.ABC):
    """A policy version's generator. `start` may take a while; `ready` says when requests can go in.

    Everything the gateway asks an engine is declared here (the supervisor: `alive`, `restartable`, `restart`,
    `down_reason`; /ready: `probe`, `ready_details`; the request path: `max_model_len`), so no caller has to probe an
    engine for what it happens to have."""

    # the gateway runs this engine (in process): it can kill and restart it, and a start has a deadline
    # (serve/engines/engine_start.py); a remote version can only be waited for
    restartable: bool = False
    max_model_len: int | None = None  # the context length, once known (None: ask the version's spec)
    has_value_head: bool = False

    def __init__(self, name: str):
        self.name = name
        self.ready = False
        self.start_error: BaseException | None = None

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def generate(self, req: GenerationRequest) -> AsyncIterator[Step]:
        """Stream steps until one with `finished=True`. Cancelling the iteration aborts the request."""

    @abc.abstractmethod
    async def probe(self, timeout_s: float) -> None:
        """One real one-token generation; raises on failure (used by /ready)."""

    @abc.abstractmethod
    async def alive(self) -> bool:
        """Cheap liveness, never a generation (the supervisor asks it every `supervise_interval_s`)."""

    async def restart(self) -> None:
        """Bring a dead engine back (only when `restartable`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be restarted by the gateway")

    @property
    def down_reason(self) -> str | None:
        """Why the engine is not alive, as far as it knows itself (None while alive, or when it cannot tell)."""
        return None

    @property
    def fault(self) -> dict | None:
        """Test-only injected faults on this version (serve.engines.faults.FaultyEngine); None on a real engine."""
        return None

    def unwrap(self) -> Engine:
        """The real engine under a test-only fault wrapper (serve.engines.faults.FaultyEngine): this one."""
        return self

    async def score(self, prompt_token_ids: list[int], response_token_ids: list[int]) -> tuple[float, float | None] | None:
        """Value (and entropy) at the position after prompt + response: one extra 1-token step (cheap with prefix
        caching), OpenRLHF's "reward at EOS" when the response ends with EOS. None when not available."""
        return None

    def unfinished(self) -> int | None:
        """Sequences the engine still holds (in-process only; None when not observable)."""
        return None

    def ready_details(self) -> dict:
        """What `/ready?verbose=true` shows of this engine beyond the supervisor's view (its process, its
        backends, ...)."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "ready": self.ready, "kind": type(self).__name__}
