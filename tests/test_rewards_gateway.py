"""Rewards through the live gateway: monitor metrics, feedback stored as preference data. (Flagged answers and
the review queue are covered in tests/test_monitor.py; the incident demo drives them end to end.)"""

from __future__ import annotations

import json

import httpx


def _chat(c, content, **kw):
    body = {"model": "stable", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **kw}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_feedback_rating_and_preference(gateway, cache_dir):
    with httpx.Client(base_url=gateway, timeout=60) as c:
        a = _chat(c, "add 2 3", seed=1, temperature=1.0)
        b = _chat(c, "add 2 3", seed=2, temperature=1.0)
        other = _chat(c, "reverse abc")
        r = c.post("/v1/feedback", json={"response_id": a["id"], "rating": 1.0})
        assert r.status_code == 200 and r.json()["type"] == "rating"
        r = c.post("/v1/feedback", json={"type": "preference", "chosen_id": a["id"], "rejected_id": b["id"]})
        assert r.status_code == 200 and r.json()["type"] == "preference"
        # mistakes get clear 4xx errors
        r = c.post("/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": 1})
        assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
        r = c.post("/v1/feedback", json={"type": "preference", "chosen_id": a["id"], "rejected_id": other["id"]})
        assert r.status_code == 400 and r.json()["error"]["message"]
        r = c.post("/v1/feedback", json={"response_id": a["id"], "rating": 7})
        assert r.status_code == 400
    prefs = [json.loads(line) for line in (cache_dir / "feedback" / "preferences.jsonl").read_text().splitlines()]
    assert prefs[-1]["chosen"] == a["choices"][0]["message"]["content"]
    assert prefs[-1]["rejected"] == b["choices"][0]["message"]["content"]
    assert "add 2 3" in prefs[-1]["prompt"]


def test_monitor_metrics_exported(gateway):
    with httpx.Client(base_url=gateway, timeout=60) as c:
        for i in range(5):
            _chat(c, f"add {i} {i}")
        text = c.get("/metrics").text
    assert "aligngate_monitor" in text or "aligngate_reward" in text
