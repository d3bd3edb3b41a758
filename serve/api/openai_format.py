"""Engine `Step`s -> OpenAI response bodies and SSE chunks (chat and legacy completions).

Hand-built dicts rather than pydantic models: this runs once per streamed chunk, and on 2 cores the per-chunk
cost of the proxy is what separates a lean gateway from a slow one (LiteLLM's proxy in front of vLLM here: p99
end to end in seconds where vLLM alone answered in a few hundred ms; benchmarks/README.md, vs-litellm).
"""

from __future__ import annotations

import json
import os
import time

import msgspec

from serve.engines.engine import Delta, TokenLogprob
from serve.api.errors import error_sse

DONE = b"data: [DONE]\n\n"
# ASCII-only JSON: U+2028, U+0085 and friends stay escaped, so no line-splitting SSE client can mis-frame an event.
_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_fast = msgspec.json.encode  # ~7x faster per chunk; same bytes whenever the output is ASCII (most chunks)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(16).hex()


def sse(obj: dict) -> bytes:
    out = _fast(obj)
    if not out.isascii():  # non-ASCII text: the escaping encoder (see above)
        out = _dumps(obj).encode()
    return b"data: " + out + b"\n\n"


def _finite(x: float) -> float:
    return x if x > -1e30 else -9999.0  # OpenAI clients expect a number; -inf is not JSON


def chat_logprobs(lps: list[TokenLogprob]) -> dict:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": _finite(t.logprob),
                "bytes": list(t.token.encode()),
                "top_logprobs": [{"token": s, "logprob": _finite(v), "bytes": list(s.encode())} for s, v in t.top],
            }
            for t in lps
        ]
    }


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict:
    tokens, values, tops, offsets = [], [], [], []
    for t in lps:
        tokens.append(t.token)
        values.append(_finite(t.logprob))
        tops.append({s: _finite(v) for s, v in t.top})
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Accumulator:
    """Collects a whole non-streamed answer from deltas."""

    def __init__(self, n: int):
        self.text = [[] for _ in range(n)]
        self.logprobs: list[list[TokenLogprob] | None] = [None] * n
        self.finish: list[str | None] = [None] * n
        self.tool_calls: list[dict[int, dict] | None] = [None] * n

    def add(self, d: Delta) -> None:
        self.text[d.index].append(d.text)
        if d.tool_calls:
            self._merge_calls(d.index, d.tool_calls)
        if d.logprobs is not None:
            self.logprobs[d.index] = (self.logprobs[d.index] or []) + d.logprobs
        if d.finish_reason:
            self.finish[d.index] = d.finish_reason

    def _merge_calls(self, i: int, deltas: list[dict]) -> None:
        """Tool-call deltas by their `index`: id, type and name as they come, argument fragments concatenated
        (a whole call arrives as one delta; a remote upstream streams fragments)."""
        calls = self.tool_calls[i] = self.tool_calls[i] or {}
        for tc in deltas:
            c = calls.setdefault(tc.get("index", 0), {"id": None, "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
            if tc.get("id"):
                c["id"] = tc["id"]
            fn = tc.get("function") or {}
            if fn.get("name"):
                c["function"]["name"] = fn["name"]
            c["function"]["arguments"] += fn.get("arguments") or ""

    def chat_body(self, rid: str, model: str, prompt_tokens: int, completion_tokens: int, extra: dict) -> dict:
        choices = []
        for i, parts in enumerate(self.text):
            lp = self.logprobs[i]
            message: dict = {"role": "assistant", "content": "".join(parts)}
            if self.tool_calls[i]:
                message["tool_calls"] = [self.tool_calls[i][k] for k in sorted(self.tool_calls[i])]
                message["content"] = message["content"] or None  # OpenAI: null content beside tool calls
            choices.append({
                "index": i,
                "message": message,
                "logprobs": chat_logprobs(lp) if lp is not None else None,
                "finish_reason": self.finish[i] or "stop",
            })
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": usage(prompt_tokens, completion_tokens), **extra}

    def completion_body(self, rid: str, model: str, prompt_tokens: int, completion_tokens: int, extra: dict,
                        prefix: str = "") -> dict:
        choices = []
        for i, parts in enumerate(self.text):
            lp = self.logprobs[i]
            choices.append({
                "index": i,
                "text": prefix + "".join(parts),
                "logprobs": completion_logprobs(lp, len(prefix)) if lp is not None else None,
                "finish_reason": self.finish[i] or "stop",
            })
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": usage(prompt_tokens, completion_tokens), **extra}


class ChatChunker:
    """SSE chunks for a streamed chat completion (role first, then content deltas, then finish)."""

    def __init__(self, rid: str, model: str, n: int, extra: dict):
        self.head = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        self.extra = extra
        self.started = [False] * n

    def chunk(self, d: Delta) -> bytes:
        delta: dict = {}
        if not self.started[d.index]:
            self.started[d.index] = True
            delta["role"] = "assistant"
        if d.tool_calls:
            delta["tool_calls"] = d.tool_calls
        if d.text or not delta:
            delta["content"] = d.text
        choice = {"index": d.index, "delta": delta,
                  "logprobs": chat_logprobs(d.logprobs) if d.logprobs is not None else None,
                  "finish_reason": d.finish_reason}
        body = {**self.head, "choices": [choice]}
        if self.extra:
            body.update(self.extra)
            self.extra = {}
        return sse(body)

    def opening(self) -> bytes:
        return b""  # the first content chunk carries the role

    def tail(self, prompt_tokens: int, completion_tokens: int, include_usage: bool, fields: dict) -> bytes:
        """The end of the stream in one write: one last chunk with no choices carrying the gateway's fields (and
        the usage, when asked for), then [DONE].

        One chunk, not a usage chunk and then a reward chunk: OpenAI's usage chunk is the last before [DONE], and
        the SDK's stream helper (`client.chat.completions.stream`) takes `usage` from the last chunk it reads
        (each chunk overwrites its snapshot's usage), so a reward chunk after the usage chunk left
        `get_final_completion().usage` None."""
        if include_usage:
            return sse({**self.head, "choices": [], "usage": usage(prompt_tokens, completion_tokens), **fields}) + DONE
        return self.extra_chunk(fields) + DONE

    def error(self, message: str, type: str, code: str | None) -> bytes:
        """An error once headers are sent: an event in the error shape, then [DONE]."""
        return error_sse(message, type, code) + DONE

    def extra_chunk(self, fields: dict) -> bytes:
        """A chunk with no choices carrying gateway fields (the reward, just before [DONE], when no usage is asked for)."""
        return sse({**self.head, "choices": [], **fields})


class CompletionChunker(ChatChunker):
    def __init__(self, rid: str, model: str, n: int, extra: dict):
        self.head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
        self.extra = extra
        self.offsets = [0] * n

    def chunk(self, d: Delta) -> bytes:
        lp = None
        if d.logprobs is not None:
            lp = completion_logprobs(d.logprobs, self.offsets[d.index])
        self.offsets[d.index] += len(d.text)
        body = {**self.head, "choices": [{"index": d.index, "text": d.text, "logprobs": lp,
                                          "finish_reason": d.finish_reason}]}
        if self.extra:
            body.update(self.extra)
            self.extra = {}
        return sse(body)
