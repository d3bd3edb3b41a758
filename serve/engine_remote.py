"""Remote engine: an OpenAI-compatible vLLM server by URL (the scale-out path).

Always streams from upstream (with usage) over one pooled `httpx.AsyncClient`, whatever the client asked, so
the gateway sees the first token as soon as upstream has it and can measure TTFT the same way for both engine
kinds. Closing the stream (client gone) closes the upstream connection, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from serve.config import VersionSpec
from serve.engine import (
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

log = get_logger(__name__)


class RemoteEngine(Engine):
    def __init__(self, spec: VersionSpec, timeout_s: float = 300.0, connect_timeout_s: float = 5.0):
        super().__init__(spec.name)
        self.spec = spec
        self.base = spec.url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        headers = {"Authorization": f"Bearer {spec.remote_api_key}"} if spec.remote_api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.base,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )
        self.remote_model = spec.remote_model

    async def start(self) -> None:
        """Wait until upstream lists its models (it may still be loading), then mark ready."""
        delay = 0.5
        while True:
            try:
                r = await self.client.get("/v1/models", timeout=5.0)
                r.raise_for_status()
                ids = [m["id"] for m in r.json().get("data", [])]
                if self.remote_model is None and ids:
                    self.remote_model = ids[0]
                if self.remote_model in ids:
                    self.ready = True
                    log.info("engine_ready", version=self.name, url=self.base, remote_model=self.remote_model)
                    return
                log.warning("remote_model_missing", version=self.name, want=self.remote_model, have=ids)
            except (httpx.HTTPError, ValueError) as e:
                log.info("remote_not_up_yet", version=self.name, url=self.base, error=type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        self.ready = False
        await self.client.aclose()

    def _body(self, req: GenerationRequest) -> dict:
        body: dict = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True}, "n": req.n}
        if req.kind == "chat":
            body["messages"] = req.messages
            if req.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = req.logprobs
        else:
            body["prompt"] = req.prompt
            if req.logprobs is not None:
                body["logprobs"] = req.logprobs
            if req.echo:
                body["echo"] = True
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
        prompt_tokens = completion_tokens = 0
        finished: set[int] = set()
        try:
            async with self.client.stream("POST", path, json=self._body(req)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _raise_upstream(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise EngineError(f"version {self.name!r}: upstream error: {chunk['error']}")
                    if usage := chunk.get("usage"):
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        completion_tokens = usage.get("completion_tokens", completion_tokens)
                    deltas = [_delta(c, req.kind) for c in chunk.get("choices", ())]
                    for d in deltas:
                        completion_tokens += 0 if usage else d.num_tokens
                        if d.finish_reason:
                            finished.add(d.index)
                    if deltas:
                        yield Step(deltas, prompt_tokens, completion_tokens, False)
            yield Step([], prompt_tokens, completion_tokens, True)
        except httpx.HTTPError as e:
            raise EngineError(f"version {self.name!r}: upstream {self.base} failed: {type(e).__name__}: {e}") from e

    async def probe(self, timeout_s: float) -> None:
        req = GenerationRequest(request_id="probe", kind="completion", prompt="ok", max_tokens=1, temperature=0.0)

        async def one() -> None:
            async for _ in self.generate(req):
                pass

        await asyncio.wait_for(one(), timeout_s)

    def describe(self) -> dict:
        return {**super().describe(), "url": self.base, "remote_model": self.remote_model}


def _raise_upstream(r: httpx.Response) -> None:
    try:
        err = r.json().get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
    except ValueError:
        err, message = {}, r.text[:500]
    if 400 <= r.status_code < 500:
        raise EngineBadRequest(message or f"upstream refused the request ({r.status_code})",
                               param=err.get("param") if isinstance(err, dict) else None)
    raise EngineError(f"upstream answered {r.status_code}: {message}")


def _delta(choice: dict, kind: str) -> Delta:
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
    return Delta(choice.get("index", 0), text, n, lps, choice.get("finish_reason"))
