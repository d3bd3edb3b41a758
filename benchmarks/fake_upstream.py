"""A fake, fast OpenAI-compatible streaming upstream — a STAND-IN, used only by the `overhead` scenario.

This is the one place in the benchmarks where a stand-in is right: to isolate the gateway's own cost, the
`overhead` scenario puts the gateway in front of an upstream that does (almost) no work, and measures the same
load sent to this server directly in the same run; the difference is what the gateway adds. It is NOT a model
server and no other scenario may use it: every other comparison runs real vLLM engines.

What it does: `GET /v1/models` (one model), `GET /health`, and `POST /v1/completions` / `POST
/v1/chat/completions`, streamed (SSE, one chunk per "token", a usage chunk, `[DONE]`) or not. It answers
`max_tokens` tokens (default 16) of a fixed word, immediately or `--token-delay-ms` apart. A raw ASGI app on
uvicorn (uvloop + httptools), no framework, so it stays cheap next to the gateway on a small machine.

    python -m benchmarks.fake_upstream --port 9000 [--model policy] [--token-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "policy"
TOKEN_DELAY_S = 0.0
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def _send_json(send, status: int, obj: dict) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


def _prompt_tokens(req: dict) -> int:
    if "messages" in req:
        text = " ".join(str(m.get("content", "")) for m in req["messages"])
    else:
        p = req.get("prompt", "")
        text = p if isinstance(p, str) else " ".join(map(str, p))
    return max(1, len(text) // 4)


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/v1/models":
        return await _send_json(send, 200, {"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "fake-upstream", "max_model_len": 4096}]})
    if method == "GET" and path == "/health":
        return await _send_json(send, 200, {})
    if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
        return await _send_json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
    req = json.loads(await _read_body(receive) or b"{}")
    chat = path.endswith("chat/completions")
    n_tok = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
    p_tok = _prompt_tokens(req)
    rid = f"fake-{time.monotonic_ns()}"
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    usage = {"prompt_tokens": p_tok, "completion_tokens": n_tok, "total_tokens": p_tok + n_tok}
    if not req.get("stream"):
        text = "tok " * n_tok
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
        return await _send_json(send, 200, {"id": rid, "object": obj, "created": created, "model": MODEL,
                                            "choices": [choice], "usage": usage})
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    head = json.dumps({"id": rid, "object": obj + (".chunk" if chat else ""), "created": created, "model": MODEL},
                      separators=(",", ":"))[:-1] + ","
    for i in range(n_tok):
        last = i == n_tok - 1
        finish = '"length"' if last else "null"
        if chat:
            delta = '{"role":"assistant","content":"tok "}' if i == 0 else '{"content":"tok "}'
            choice = f'{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}'
        else:
            choice = f'{{"index":0,"text":"tok ","logprobs":null,"finish_reason":{finish}}}'
        await send({"type": "http.response.body", "body": f"data: {head}\"choices\":[{choice}]}}\n\n".encode(),
                    "more_body": True})
        if TOKEN_DELAY_S:
            await asyncio.sleep(TOKEN_DELAY_S)
    tail = f"data: {head}\"choices\":[],\"usage\":{json.dumps(usage)}}}\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail.encode()})


def main(argv: list[str] | None = None) -> int:
    global MODEL, TOKEN_DELAY_S
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible streaming upstream (overhead benchmark only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--token-delay-ms", type=float, default=0.0)
    args = ap.parse_args(argv)
    MODEL, TOKEN_DELAY_S = args.model, args.token_delay_ms / 1000
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, backlog=4096)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
