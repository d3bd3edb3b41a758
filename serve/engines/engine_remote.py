"""Remote engine: an OpenAI-compatible vLLM server by URL (the scale-out path).

Always streams from upstream (with usage) over one pooled `aiohttp.ClientSession`, whatever the client asked,
so the gateway sees the first token as soon as upstream has it and can measure TTFT the same way for both engine
kinds. Closing the stream (client gone) closes the upstream connection, which makes vLLM abort the request.
aiohttp rather than httpx: on the streamed hot path httpx (httpcore + h11 + anyio, pure Python, and a pool that
checks every idle connection per request) was over half of the gateway's CPU per request; aiohttp's C parser
and connector cost a fraction of that (benchmarks `overhead`).

Several backends per version (`VersionSpec.urls`): each request goes to the backend with the fewest requests in
flight from this gateway (ties rotate), which adapts to slow or uneven servers better than plain round-robin.
A backend that refuses the connection, times out (connect, or no response headers within `header_timeout_s`) or
drops the connection before the first step reached the caller is marked down and the request is retried once on
another backend of the version. Never after a step was handed on: the client would see output twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgspec

from serve.config import VersionSpec
from serve.engines.engine import (
    Delta,
    Engine,
    EngineBadRequest,
    EngineError,
    EngineNotReady,
    GenerationRequest,
    Step,
    TokenLogprob,
)
from serve.logs import get_logger
from serve.vllm_ext.value_slots import ValueSlots

log = get_logger(__name__)


@dataclass(eq=False)
class Backend:
    """One upstream server of a version. `up` is passive (a refused connection or a timeout marks it down at once)
    and active (the supervisor's `alive()` probe marks it up again)."""

    base: str
    up: bool = True
    in_flight: int = 0
    last_error: str | None = None


# Failures that leave no doubt the upstream never started answering this request (refused, unreachable, timed
# out, connection dropped): safe to send the request to another backend if the client has seen nothing yet.
RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
_decode = msgspec.json.decode  # several times faster than json.loads on these small chunks
_encode = msgspec.json.encode
_JSON = {"Content-Type": "application/json"}


class RemoteEngine(Engine):
    def __init__(self, spec: VersionSpec, timeout_s: float = 300.0, connect_timeout_s: float = 5.0,
                 header_timeout_s: float = 15.0):
        self.backends = [Backend(_base(u)) for u in spec.backend_urls()]
        super().__init__(spec.name)
        self.spec = spec
        self.base = self.backends[0].base
        self.header_timeout_s = header_timeout_s
        self._rr = 0  # rotating tie-break between equally loaded backends
        self._headers = {"Authorization": f"Bearer {spec.remote_api_key}"} if spec.remote_api_key else {}
        # no total deadline (the request's own timeout bounds it): connect, and the gap between reads
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.remote_model = spec.remote_model
        # in-pass value read-out from an upstream serving the value-head class (same slots as in process)
        self.slots = ValueSlots(*spec.value_slots) if spec.value_slots else None
        self.has_value_head = self.slots is not None
        self.retries = 0  # requests sent to a second backend after the first failed before any byte

    # Not ready once every backend is marked down — by a failed request as well as by the supervisor's probe — so
    # routed requests go to stable from the very next one on; the supervisor's probe brings it back.
    @property
    def ready(self) -> bool:
        return self._ready and any(b.up for b in self.backends)

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    @property
    def client(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use (aiohttp binds it to the running loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector,
                                                  auto_decompress=False)
        return self._session

    async def _models(self, b: Backend, timeout: float) -> list[str]:
        async with self.client.get(b.base + "/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            r.raise_for_status()
            return [m["id"] for m in (await r.json(content_type=None)).get("data", [])]

    async def start(self) -> None:
        """Wait until an upstream lists its models (it may still be loading), then mark ready. Backends that do
        not answer yet stay marked down; the supervisor's probe brings them in when they do."""
        delay = 0.5
        while not self._closed:  # stop() closes the client: an unloaded version stops polling
            results = await asyncio.gather(*(self._models(b, 5.0) for b in self.backends), return_exceptions=True)
            for b, ids in zip(self.backends, results):
                if isinstance(ids, BaseException):
                    b.up, b.last_error = False, f"{type(ids).__name__}: {ids}"
                    continue
                if self.remote_model is None and ids:
                    self.remote_model = ids[0]
                b.up = self.remote_model in ids
                b.last_error = None if b.up else f"model {self.remote_model!r} not served (has {ids})"
            if any(b.up for b in self.backends):
                self.ready = True
                log.info("engine_ready", version=self.name, url=self.base, remote_model=self.remote_model,
                         backends={b.base: b.up for b in self.backends})
                return
            log.info("remote_not_up_yet", version=self.name, errors={b.base: b.last_error for b in self.backends})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise EngineNotReady(f"version {self.name!r} was stopped before an upstream answered")

    async def stop(self) -> None:
        self.ready = False
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def alive(self, timeout_s: float = 5.0) -> bool:
        """Probe every backend's `/v1/models` (cheap, no generation); update their marks; any one up = alive."""
        results = await asyncio.gather(*(self._models(b, timeout_s) for b in self.backends), return_exceptions=True)
        for b, ids in zip(self.backends, results):
            was = b.up
            if isinstance(ids, BaseException):
                b.up, b.last_error = False, f"{type(ids).__name__}: {ids}"
            else:
                b.up = self.remote_model in ids
                b.last_error = None if b.up else f"model {self.remote_model!r} not served"
            if was != b.up:
                log.warning("remote_backend_up" if b.up else "remote_backend_down", version=self.name,
                            backend=b.base, error=b.last_error)
        return any(b.up for b in self.backends)

    @property
    def down_reason(self) -> str | None:
        errs = [f"{b.base}: {b.last_error}" for b in self.backends if not b.up]
        return "; ".join(errs) if len(errs) == len(self.backends) else None

    def _pick(self, exclude: list[Backend]) -> Backend | None:
        """Least in flight among the backends marked up (rotating between ties); if none is marked up, the least
        loaded of the others (a mark may be stale: trying beats refusing)."""
        left = [b for b in self.backends if b not in exclude]
        pool = [b for b in left if b.up] or left
        if not pool:
            return None
        self._rr += 1
        n = len(pool)
        return min((pool[(self._rr + i) % n] for i in range(n)), key=lambda b: b.in_flight)

    def _down(self, b: Backend, e: BaseException) -> None:
        if b.up:
            log.warning("remote_backend_down", version=self.name, backend=b.base, error=f"{type(e).__name__}: {e}")
        b.up, b.last_error = False, f"{type(e).__name__}: {e}"

    def _body(self, req: GenerationRequest) -> dict:
        body: dict = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True}, "n": req.n}
        if req.kind == "chat":
            body["messages"] = req.messages
            if req.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = req.logprobs
            # structured outputs and tools go upstream as the client sent them: the upstream's backends and its
            # --tool-call-parser do the work (and refuse what they cannot do, which comes back as a 400)
            for key in ("response_format", "tools", "tool_choice", "parallel_tool_calls"):
                value = getattr(req, key)
                if value is not None:
                    body[key] = value
        else:
            body["prompt"] = req.prompt
            if req.logprobs is not None:
                body["logprobs"] = req.logprobs
            if req.echo:
                body["echo"] = True
        if req.logit_bias:
            body["logit_bias"] = {str(i): v for i, v in req.logit_bias.items()}
        if self.slots is not None:
            ids = self.slots.ids()
            # never sampled (they sit at -1000 anyway): the slots' -100 wins over a client's bias on them
            body["logit_bias"] = {**body.get("logit_bias", {}), **{str(i): -100.0 for i in ids}}
            if req.with_values and req.logprobs is None:  # the client's own logprobs win, as in process
                body["logprob_token_ids"] = ids
                body["logprobs"] = True if req.kind == "chat" else 1
                body["return_tokens_as_token_ids"] = True  # slots come back as "token_id:<id>"
        if req.ignore_eos:
            body["ignore_eos"] = True
        for key in ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                    "user", "min_tokens", "repetition_penalty"):
            value = getattr(req, key)
            if value is not None:
                body[key] = value
        return body

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Step]:
        if not self.ready:
            raise EngineNotReady(f"version {self.name!r} is not ready")
        path = "/v1/chat/completions" if req.kind == "chat" else "/v1/completions"
        body = self._body(req)
        tried: list[Backend] = []
        while True:
            b = self._pick(tried)
            if b is None:
                raise EngineError(f"version {self.name!r}: no backend left to try")
            tried.append(b)
            sent = False  # has a step gone to the caller? then a retry would duplicate output: never
            b.in_flight += 1
            try:
                # aclosing: a consumer that stops early (client gone) closes the upstream stream now, not at GC
                async with contextlib.aclosing(self._one(b, path, req, body)) as steps:
                    async for step in steps:
                        sent = True
                        yield step
                return
            except RETRYABLE as e:
                self._down(b, e)
                if sent or len(tried) >= 2 or len(tried) >= len(self.backends):  # retried once at most
                    raise EngineError(f"version {self.name!r}: upstream {b.base} failed: {type(e).__name__}: {e}") from e
                self.retries += 1
                log.warning("remote_retry", version=self.name, failed=b.base, error=type(e).__name__)
            except aiohttp.ClientError as e:
                raise EngineError(f"version {self.name!r}: upstream {b.base} failed: {type(e).__name__}: {e}") from e
            finally:
                b.in_flight -= 1

    async def _one(self, b: Backend, path: str, req: GenerationRequest, body: dict) -> AsyncIterator[Step]:
        prompt_tokens = completion_tokens = 0
        reading = self.slots is not None and "logprob_token_ids" in body
        slots = self.slots if reading else None
        kind = req.kind
        async with contextlib.AsyncExitStack() as stack:
            # Response headers within `header_timeout_s`, or the backend counts as not answering (retryable).
            try:
                async with asyncio.timeout(self.header_timeout_s):
                    r = await stack.enter_async_context(self.client.post(b.base + path, data=_encode(body),
                                                                         headers=_JSON))
            except TimeoutError as e:
                raise aiohttp.ServerTimeoutError(f"no response headers within {self.header_timeout_s} s") from e
            if r.status >= 400:
                await _raise_upstream(r)
            done = False
            buf = b""
            # Lines split by hand from whatever each read brings (aiohttp's line iterator refuses lines over twice
            # its buffer, and one SSE event with logprobs for n choices can be long). After [DONE], read on to the
            # end of the body: a response released before its end closes its connection, and every request would
            # pay a new one.
            stack.callback(lambda: None if done else r.close())  # stopped early: drop the connection (aborts)
            async for data in r.content.iter_any():
                if done:
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                # the events of one read travel on as one Step (and one write to the client): under load a read
                # often holds several tokens, and a write per token is most of a proxy's per-token cost
                deltas: list[Delta] = []
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].rstrip(b"\r")
                    if payload == b"[DONE]":
                        done = True
                        break
                    chunk = _decode(payload)
                    if "error" in chunk:
                        raise EngineError(f"version {self.name!r}: upstream error: {chunk['error']}")
                    if usage := chunk.get("usage"):
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        completion_tokens = usage.get("completion_tokens", completion_tokens)
                    new = [_delta(c, kind, slots) for c in chunk.get("choices", ())]
                    if not usage:
                        completion_tokens += sum(d.num_tokens for d in new)
                    deltas += new
                if deltas:
                    yield Step(deltas, prompt_tokens, completion_tokens, False)
        yield Step([], prompt_tokens, completion_tokens, True)

    async def probe(self, timeout_s: float) -> None:
        req = GenerationRequest(request_id="probe", kind="completion", prompt="ok", max_tokens=1, temperature=0.0)

        async def one() -> None:
            async for _ in self.generate(req):
                pass

        await asyncio.wait_for(one(), timeout_s)

    def ready_details(self) -> dict:
        # which backends answer
        return {"backends": {b.base: {"up": b.up, "error": b.last_error} for b in self.backends},
                "retries": self.retries}

    def describe(self) -> dict:
        return {**super().describe(), "url": self.base, "remote_model": self.remote_model, "retries": self.retries,
                "backends": [{"url": b.base, "up": b.up, "in_flight": b.in_flight, "error": b.last_error}
                             for b in self.backends]}


def _base(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


async def _raise_upstream(r: aiohttp.ClientResponse) -> None:
    raw = await r.read()
    try:
        err = json.loads(raw).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        err, message = {}, raw[:500].decode(errors="replace")
    if 400 <= r.status < 500:
        raise EngineBadRequest(message or f"upstream refused the request ({r.status})",
                               param=err.get("param") if isinstance(err, dict) else None)
    raise EngineError(f"upstream answered {r.status}: {message}")


def _slot_values(items: list[tuple[dict[str, float]]], s: ValueSlots) -> tuple[list[float], list[float] | None]:
    """value = lp[A] - lp[B] (and entropy = lp[C] - lp[B]) per position, from "token_id:<id>" keyed logprobs."""
    a, b, c = f"token_id:{s.a}", f"token_id:{s.b}", f"token_id:{s.c}" if s.c is not None else None
    values = [top[a] - top[b] for top in items]
    ents = [top[c] - top[b] for top in items] if c is not None else None
    return values, ents


def _delta(choice: dict, kind: str, slots: ValueSlots | None = None) -> Delta:
    if slots is not None:  # the upstream's logprobs carry only the value slots: read them, hide them
        lp = choice.get("logprobs") or {}
        if kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
            items = [{a["token"]: a["logprob"] for a in t.get("top_logprobs") or ()} for t in lp.get("content") or ()]
        else:
            text = choice.get("text") or ""
            items = [dict(top or {}) for top in lp.get("top_logprobs") or ()]
        d = Delta(choice.get("index", 0), text, len(items) or (1 if text else 0), None, choice.get("finish_reason"))
        if items:
            d.values, d.entropies = _slot_values(items, slots)
        if kind == "chat":
            d.tool_calls = (choice.get("delta") or {}).get("tool_calls") or None
        return d
    if kind == "chat":
        text = (choice.get("delta") or {}).get("content") or ""
        lp = choice.get("logprobs")
        lps = None
        if lp and lp.get("content") is not None:
            lps = [
                TokenLogprob(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t.get("top_logprobs") or ()])
                for t in lp["content"]
            ]
    else:
        text = choice.get("text") or ""
        lp = choice.get("logprobs")
        lps = None
        if lp and lp.get("tokens") is not None:
            tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
            lps = [
                TokenLogprob(t, v if v is not None else float("-inf"), list((top or {}).items()))
                for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops)
            ]
    n = len(lps) if lps is not None else (1 if text else 0)
    d = Delta(choice.get("index", 0), text, n, lps, choice.get("finish_reason"))
    if kind == "chat":
        d.tool_calls = (choice.get("delta") or {}).get("tool_calls") or None  # upstream's OpenAI deltas, as they are
    return d
