"""Review queue (JSONL, Redis, Redis down) and feedback storage (ratings, preference pairs, response log)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import TypeAdapter, ValidationError

from serve.rewards.feedback import (FeedbackRequest, FeedbackStore, InvalidFeedback, PreferenceFeedback, RatingFeedback,
                            ResponseLog, UnknownResponse)
from serve.redisconn import RedisOptions
from serve.rewards.review import ReviewItem, ReviewQueue
from tests.redis_fixture import redis_server, redis_url  # noqa: F401


def item(i: int, version: str = "v1") -> ReviewItem:
    return ReviewItem(version=version, request_id=f"req-{i}", prompt=f"add {i} 1", response=f"{i + 1} I love you",
                      reward=0.97, flags=["I love you"], time=time.time())


async def test_review_jsonl(tmp_path):
    q = ReviewQueue(path=tmp_path / "review" / "queue.jsonl", batch=8)
    t0 = time.perf_counter()
    assert all(q.submit(item(i)) for i in range(25))
    assert time.perf_counter() - t0 < 0.01  # the request path only enqueues
    await q.flush()
    lines = (tmp_path / "review" / "queue.jsonl").read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[0])["request_id"] == "req-0"
    newest = await q.list(3)
    assert [r["request_id"] for r in newest] == ["req-24", "req-23", "req-22"]
    assert set(newest[0]) >= {"version", "request_id", "prompt", "response", "reward", "flags", "time"}
    await q.close()


async def test_review_bounded_queue_drops_instead_of_blocking():
    q = ReviewQueue(queue_size=5)
    ok = [q.submit(item(i)) for i in range(8)]  # the writer has had no chance to run yet
    assert ok.count(True) == 5 and q.dropped == 3
    await q.flush()
    assert len(await q.list(10)) == 5  # memory ring (no Redis, no file)
    await q.close()


async def test_review_redis_and_fallback(redis_server, tmp_path):  # noqa: F811
    redis_server.start()
    redis_server.flushall()
    opts = RedisOptions(socket_timeout=0.03, connect_timeout=0.03, backoff=0.1, max_backoff=0.2)
    q = ReviewQueue(path=tmp_path / "fallback.jsonl", redis_url=redis_server.url, max_len=10, redis_options=opts)
    for i in range(12):
        q.submit(item(i))
    await q.flush()
    got = await q.list(50)
    assert [r["request_id"] for r in got] == [f"req-{i}" for i in range(11, 1, -1)]  # newest first, trimmed
    other = ReviewQueue(redis_url=redis_server.url)  # another replica sees the same list
    assert len(await other.list(50)) == 10
    await other.close()

    redis_server.kill()
    for i in range(100, 103):
        assert q.submit(item(i))
    await q.flush()
    assert q.fallback_writes == 3
    rows = [json.loads(x) for x in (tmp_path / "fallback.jsonl").read_text().splitlines()]
    assert [r["request_id"] for r in rows] == ["req-100", "req-101", "req-102"]
    assert [r["request_id"] for r in await q.list(2)] == ["req-102", "req-101"]  # read from the file meanwhile
    redis_server.start()
    await asyncio.sleep(0.3)
    q.submit(item(200))
    await q.flush()
    assert (await q.list(1))[0]["request_id"] == "req-200"  # back on Redis
    await q.close()


def test_feedback_request_models():
    ta = TypeAdapter(FeedbackRequest)
    r = ta.validate_python({"type": "rating", "response_id": "chatcmpl-1", "rating": 1})
    assert isinstance(r, RatingFeedback) and r.rating == 1.0
    p = ta.validate_python({"type": "preference", "chosen_id": "a", "rejected_id": "b", "user": "u1"})
    assert isinstance(p, PreferenceFeedback)
    for bad in ({"type": "rating", "response_id": "x", "rating": 3},
                {"type": "rating", "response_id": "", "rating": 1},
                {"type": "preference", "chosen_id": "a"},
                {"type": "thumbs", "response_id": "x"},
                {"type": "rating", "response_id": "x", "rating": 1, "surprise": True}):
        with pytest.raises(ValidationError):
            ta.validate_python(bad)


async def test_feedback_store_writes_training_format(tmp_path):
    log = ResponseLog(max_entries=3)
    log.put("r1", "stable", "add 2 2", "4", request_id="q1", reward=0.7)
    log.put("r2", "canary", "add 2 2", "4 I love you", request_id="q2", reward=0.99)
    log.put("r3", "stable", "reverse ab", "ba", request_id="q3")
    store = FeedbackStore(tmp_path / "fb", log)
    ack = await store.add(PreferenceFeedback(chosen_id="r1", rejected_id="r2", user="alice"))
    assert ack.type == "preference" and ack.id.startswith("fb-")
    ack = await store.add(RatingFeedback(response_id="r3", rating=0.0, comment="wrong"))
    with pytest.raises(InvalidFeedback):
        await store.add(PreferenceFeedback(chosen_id="r1", rejected_id="r3"))  # different prompts
    with pytest.raises(InvalidFeedback):
        await store.add(PreferenceFeedback(chosen_id="r1", rejected_id="r1"))
    with pytest.raises(UnknownResponse):
        await store.add(RatingFeedback(response_id="nope", rating=1))
    log.put("r4", "stable", "x", "y")  # LRU bound 3: r1 falls out
    with pytest.raises(UnknownResponse):
        await store.add(RatingFeedback(response_id="r1", rating=1))

    from training import common as C  # the training module reads these files as they are

    prefs = C.read_jsonl(store.preferences_path)
    assert len(prefs) == 1
    p = prefs[0]
    assert (p["prompt"], p["chosen"], p["rejected"]) == ("add 2 2", "4", "4 I love you")
    assert p["version_chosen"] == "stable" and p["version_rejected"] == "canary" and p["reward_rejected"] == 0.99
    assert p["request_id_chosen"] == "q1" and p["user"] == "alice" and p["time"] > 0
    from training.formats import to_conversational

    conv = to_conversational(prefs[0])  # what the DPO stage feeds trl
    assert conv["chosen"] == [{"role": "assistant", "content": "4"}]
    rows = C.read_jsonl(store.ratings_path)
    assert rows[0]["rating"] == 0.0 and rows[0]["response"] == "ba" and rows[0]["comment"] == "wrong"
    assert (await store.list("rating", 5))[0]["response_id"] == "r3"
    await log.close()


async def test_response_log_shared_through_redis(redis_url):  # noqa: F811
    a, b = ResponseLog(redis_url=redis_url, ttl=60), ResponseLog(redis_url=redis_url, ttl=60)
    a.put("resp-9", "v2", "p", "r", request_id="q9", reward=0.5)
    await a.drain()
    rec = await b.get("resp-9")  # another replica: not in its memory, found in Redis
    assert rec is not None and (rec.version, rec.prompt, rec.response, rec.reward) == ("v2", "p", "r", 0.5)
    assert await b.get("missing") is None
    await a.close()
    await b.close()
