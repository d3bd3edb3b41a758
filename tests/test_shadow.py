"""Shadow mode: a share of stable's traffic mirrored to the canary, scored and recorded, never returned."""

from __future__ import annotations

import time

import httpx

from tests.promtext import metric


def _admin_key(cache_dir) -> str:
    return (cache_dir / "admin_key").read_text().strip()


def test_shadow_mirrors_without_answering(gateway, cache_dir):
    headers = {"Authorization": f"Bearer {_admin_key(cache_dir)}"}
    with httpx.Client(base_url=gateway, timeout=60) as c:
        r = c.post("/admin/versions/canary/shadow", json={"share": 1.0, "reason": "test"}, headers=headers)
        assert r.status_code == 200 and r.json()["share"] == 1.0
        assert c.post("/admin/versions/canary/shadow", json={"share": 1.0}).status_code == 401  # admin key needed
        assert c.post("/admin/versions/nope/shadow", json={"share": 1.0}, headers=headers).status_code == 404
        before = metric(gateway, "aligngate_shadow_requests_total", version="canary", outcome="answered")
        try:
            for i in range(6):
                r = c.post("/v1/chat/completions", json={"model": "aligngate", "max_tokens": 6,
                                                         "messages": [{"role": "user", "content": f"add {i} 1"}]})
                assert r.status_code == 200 and r.headers["x-aligngate-version"] == "stable"
                assert r.json()["aligngate"]["version"] == "stable"
            deadline = time.monotonic() + 30
            while metric(gateway, "aligngate_shadow_requests_total", version="canary", outcome="answered") < before + 6:
                assert time.monotonic() < deadline, "shadow copies were not answered"
                time.sleep(0.2)
        finally:
            c.post("/admin/versions/canary/shadow", json={"share": 0.0}, headers=headers)
