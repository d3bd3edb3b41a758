"""A replica whose versions are all remote vLLM servers (the scale-out path) runs without torch or vLLM in its
process: they are imported only where a version runs in process (serve.gateway.make_engine)."""

from __future__ import annotations

import json

import httpx

from benchmarks.procs import free_port, start_aligngate


def test_remote_only_gateway_loads_neither_torch_nor_vllm(session_dir):
    upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens: /health answers, the version is not ready
    versions = [{"name": "stable", "url": upstream, "weight": 1}]
    proc, url = start_aligngate("gateway-remote-only", session_dir, wait="health",
                                env={"ALIGNGATE_VERSIONS": json.dumps(versions),
                                     "ALIGNGATE_CACHE_DIR": str(session_dir / "remote-only")})
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       json={"model": "stable", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code in (502, 503), r.text  # the upstream is down: a clear error, never a 500
        assert r.json()["error"]["message"]
        maps = open(f"/proc/{proc.p.pid}/maps").read()
        assert "libtorch" not in maps and "/vllm/" not in maps, "a remote-only replica mapped torch or vLLM"
    finally:
        proc.stop()
