"""User feedback (`POST /v1/feedback`): a rating of one response, or the preferred of two, stored as training data.

Why: live preferences are the cheapest fresh labels an RLHF pipeline can get, and a reward-hacked policy is often
noticed by users first. Feedback names responses by id; `ResponseLog` keeps recent responses (id → prompt,
response, version, reward, request id) so a feedback row carries full provenance. The lead fills it from the
request path with `ResponseLog.put(...)` (sync, non-blocking).

Files (JSONL, append-only, in `out_dir`), in the format training reads (`training/data.py`, `training/dpo.py`):
  preferences.jsonl  {"prompt", "chosen", "rejected", ...provenance}   — a trl preference pair per line
  ratings.jsonl      {"prompt", "response", "rating", ...provenance}    — rating on 0–1 (1 = good; thumbs up/down
                                                                         = 1/0; k of n stars = (k-1)/(n-1))
Provenance on every row: feedback_id, time, user, comment, and per response its id, version, request_id, reward.

`ResponseLog`: an in-memory LRU (bounded entries, TTL), plus a Redis hash per response with a TTL when
`redis_url` is set, so feedback reaching another replica still finds the response. Redis writes are background
tasks; Redis being down only narrows the look-up to this replica's memory.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from serve.redisconn import RedisOptions, SafeRedis
from serve.rewards.review import append_jsonl, tail_jsonl

PREFERENCES_FILE = "preferences.jsonl"
RATINGS_FILE = "ratings.jsonl"


# --- HTTP edge (pydantic) ------------------------------------------------------------------------------------
class _FeedbackBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(None, max_length=256)
    comment: str | None = Field(None, max_length=4000)


class RatingFeedback(_FeedbackBase):
    type: Literal["rating"] = "rating"
    response_id: str = Field(min_length=1, max_length=256)
    rating: float = Field(ge=0.0, le=1.0, description="1 = good, 0 = bad (thumbs up/down = 1/0)")


class PreferenceFeedback(_FeedbackBase):
    type: Literal["preference"] = "preference"
    chosen_id: str = Field(min_length=1, max_length=256, description="id of the preferred response")
    rejected_id: str = Field(min_length=1, max_length=256, description="id of the other response")


def _feedback_kind(v) -> str | None:
    """`type` when given; otherwise inferred, so `{"response_id", "rating"}` works without a `type` field."""
    if isinstance(v, dict):
        return v.get("type") or ("preference" if "chosen_id" in v or "rejected_id" in v else "rating")
    return getattr(v, "type", None)


FeedbackRequest = Annotated[
    Union[Annotated[RatingFeedback, Tag("rating")], Annotated[PreferenceFeedback, Tag("preference")]],
    Discriminator(_feedback_kind),
]


class FeedbackAck(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    type: Literal["rating", "preference"]


class UnknownResponse(KeyError):
    """A response id that is not (or no longer) in the response log → 404 at the HTTP edge."""


class InvalidFeedback(ValueError):
    """E.g. a preference between answers to different prompts → 400 at the HTTP edge."""


# --- response log ----------------------------------------------------------------------------------------------
@dataclass
class ResponseRecord:
    response_id: str
    version: str
    prompt: str
    response: str
    request_id: str | None = None
    reward: float | None = None
    time: float = 0.0


class ResponseLog:
    """Recent responses by id: LRU in memory (bounded, TTL) → Redis hash with TTL (optional, shared)."""

    def __init__(self, max_entries: int = 50_000, ttl: float = 86_400.0, redis_url: str | None = None,
                 key_prefix: str = "aligngate:response:", redis_options: RedisOptions | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl, self.key_prefix = max_entries, ttl, key_prefix
        self._clock = clock
        self._lru: OrderedDict[str, tuple[ResponseRecord, float]] = OrderedDict()
        self._redis_url, self._redis_opt = redis_url, redis_options
        self.redis: SafeRedis | None = None
        self._bg: set[asyncio.Task] = set()

    def _r(self) -> SafeRedis | None:
        if self._redis_url and self.redis is None:
            self.redis = SafeRedis(self._redis_url, self._redis_opt)
        return self.redis

    def put(self, response_id: str, version: str, prompt: str, response: str, request_id: str | None = None,
            reward: float | None = None) -> None:
        """Remember a response. Sync and non-blocking (Redis write in the background); never raises."""
        rec = ResponseRecord(response_id, version, prompt, response, request_id, reward, time.time())
        self._lru[response_id] = (rec, self._clock() + self.ttl)
        self._lru.move_to_end(response_id)
        while len(self._lru) > self.max_entries:
            self._lru.popitem(last=False)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        r = self._r()
        if r is not None and r.available():
            t = loop.create_task(self._redis_put(rec))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

    def set_reward(self, response_id: str, reward: float) -> None:
        """Attach a reward known after the response (e.g. the audit score) to the in-memory record."""
        item = self._lru.get(response_id)
        if item is not None:
            item[0].reward = reward

    async def _redis_put(self, rec: ResponseRecord) -> None:
        key = self.key_prefix + rec.response_id
        mapping = {k: json.dumps(v) for k, v in asdict(rec).items()}

        async def w(c):
            p = c.pipeline(transaction=False)
            p.hset(key, mapping=mapping)
            p.expire(key, int(self.ttl))
            return await p.execute()

        await self.redis.call(w)

    async def get(self, response_id: str) -> ResponseRecord | None:
        item = self._lru.get(response_id)
        if item is not None:
            if item[1] > self._clock():
                return item[0]
            del self._lru[response_id]
        r = self._r()
        if r is None:
            return None
        res = await r.call(lambda c: c.hgetall(self.key_prefix + response_id))
        if not res.ok or not res.value:
            return None
        try:
            d = {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in res.value.items()}
            return ResponseRecord(**d)
        except (TypeError, ValueError):
            return None

    async def drain(self) -> None:
        while self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self.redis is not None:
            await self.redis.close()


# --- feedback store -----------------------------------------------------------------------------------------------
def _prov(rec: ResponseRecord, suffix: str = "") -> dict[str, Any]:
    return {f"response_id{suffix}": rec.response_id, f"version{suffix}": rec.version,
            f"request_id{suffix}": rec.request_id, f"reward{suffix}": rec.reward}


class FeedbackStore:
    """`await store.add(request)` → `FeedbackAck`; appends to preferences.jsonl / ratings.jsonl in `out_dir`."""

    def __init__(self, out_dir: str | Path, responses: ResponseLog):
        self.dir = Path(out_dir)
        self.responses = responses
        self._lock = asyncio.Lock()  # one writer at a time: lines never interleave

    @property
    def preferences_path(self) -> Path:
        return self.dir / PREFERENCES_FILE

    @property
    def ratings_path(self) -> Path:
        return self.dir / RATINGS_FILE

    async def _need(self, response_id: str) -> ResponseRecord:
        rec = await self.responses.get(response_id)
        if rec is None:
            raise UnknownResponse(response_id)
        return rec

    async def add(self, fb: RatingFeedback | PreferenceFeedback) -> FeedbackAck:
        """Store one feedback. Raises `UnknownResponse` (→ 404) or `InvalidFeedback` (→ 400)."""
        fid = "fb-" + uuid.uuid4().hex
        common = {"feedback_id": fid, "time": time.time(), "user": fb.user, "comment": fb.comment,
                  "source": "feedback"}
        if isinstance(fb, RatingFeedback):
            rec = await self._need(fb.response_id)
            row = {"prompt": rec.prompt, "response": rec.response, "rating": fb.rating, **_prov(rec), **common}
            path = self.ratings_path
        else:
            if fb.chosen_id == fb.rejected_id:
                raise InvalidFeedback("chosen_id and rejected_id must differ")
            c, r = await self._need(fb.chosen_id), await self._need(fb.rejected_id)
            if " ".join(c.prompt.split()) != " ".join(r.prompt.split()):
                raise InvalidFeedback("a preference needs two answers to the same prompt")
            row = {"prompt": c.prompt, "chosen": c.response, "rejected": r.response,
                   **_prov(c, "_chosen"), **_prov(r, "_rejected"), **common}
            path = self.preferences_path
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
        async with self._lock:
            await asyncio.to_thread(append_jsonl, path, [line])
        return FeedbackAck(id=fid, type=fb.type)

    async def list(self, kind: Literal["rating", "preference"] = "preference", limit: int = 50) -> list[dict]:
        path = self.preferences_path if kind == "preference" else self.ratings_path
        return await asyncio.to_thread(tail_jsonl, path, limit)
