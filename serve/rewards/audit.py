"""Audit reward model: a second, independent reward model that scores a sample of answers off the request path.

Why: the in-pass value comes from the policy's own head, which was trained against the (possibly biased) reward
model it is hacking. An independently trained reward model that disagrees with the value head is the clearest
sign of reward hacking (the monitor alarms on the gap). It must cost the request nothing: answers are sampled
(`fraction`), queued, and scored in batches (up to `max_batch`, or whatever arrived within `max_wait_ms`) by one
call in a worker thread. `submit()` returns an `asyncio.Future` so a client that asked to wait can await it.

Model directory contract (what `training/reward_model.py` writes):
    reward_model.onnx   inputs `input_ids`, `attention_mask` int64 [batch, length], right-padded;
                        output `scores` float [batch] — the score at the last real token
    hf/                 LlamaForSequenceClassification (torch fallback) + HF tokenizer files (tokenizer.json)
    rm_config.json      {"mu_ref": float, ...}: reward01 = sigmoid(score − mu_ref) (0.5 = as good as an average
                        answer of the reference policy), optional "version"
(`model.onnx` and a top-level tokenizer.json are accepted too.) With `"encoding": "chat_template"` in
rm_config.json (an imported OpenRLHF critic, `training/import_checkpoint.py`), the pair is rendered by the
tokenizer's own chat template instead (`TemplateEncoder`). A sequence is the chat format the training
module scores: `<|bos|><|user|>{prompt}<|end|><|assistant|>{response}<|end|>`; special tokens are added by id
and the texts are encoded with `encode_special_tokens=True`, so user text that spells "<|end|>" stays text
(identical to training.common.collate_prompt_response). Sequences longer than `max_length` keep their first
two and last `max_length − 2` tokens (the score is read at the end).

Backends: onnxruntime on CPU (default: measured faster than torch at batch 32 on this machine, see
benchmarks/results/cache.json; `backend="auto"` picks ONNX when the file and onnxruntime exist) or torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("aligngate.audit")

ONNX_NAMES = ("reward_model.onnx", "model.onnx")
SPECIALS = {"bos": "<|bos|>", "user": "<|user|>", "end": "<|end|>", "assistant": "<|assistant|>", "pad": "<|pad|>"}


@dataclass
class AuditConfig:
    model_dir: str | Path
    backend: Literal["auto", "onnx", "torch"] = "auto"
    fraction: float = 0.1  # share of answers audited (deterministic by request id)
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_pending: int = 2048  # beyond this, new items are dropped (never block the request path)
    threads: int = 1  # intra-op threads: a background job next to the engine; 2 stalled in barriers under load
    max_length: int = 512
    model_version: str | None = None  # default: rm_config.json "version", else the directory name


@dataclass(frozen=True, slots=True)
class AuditResult:
    score: float  # raw reward-model score
    reward: float  # 0–1: sigmoid(score − mu_ref)
    model_version: str
    batch_size: int


@dataclass(slots=True)
class AuditItem:
    prompt: str
    response: str
    version: str | None
    request_id: str | None
    meta: dict[str, Any] | None
    future: asyncio.Future


# --- encoding ------------------------------------------------------------------------------------------------
def _find(d: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        for p in (d / n, d / "hf" / n):
            if p.exists():
                return p
    return None


class ChatEncoder:
    """prompt/response pairs → right-padded int64 (input_ids, attention_mask), the training module's format."""

    def __init__(self, tokenizer_json: str | Path, max_length: int = 512):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.encode_special_tokens = True  # special-token look-alikes in user text stay text
        self.tok.no_padding()
        self.tok.no_truncation()
        ids = {k: self.tok.token_to_id(v) for k, v in SPECIALS.items()}
        missing = [SPECIALS[k] for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.ids = ids
        self.max_length = max_length

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        i = self.ids
        ps = self.tok.encode_batch(list(prompts), add_special_tokens=False)
        rs = self.tok.encode_batch(list(responses), add_special_tokens=False)
        seqs = []
        for p, r in zip(ps, rs):
            s = [i["bos"], i["user"], *p.ids, i["end"], i["assistant"], *r.ids, i["end"]]
            if len(s) > self.max_length:
                s = s[:2] + s[-(self.max_length - 2):]
            seqs.append(s)
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), i["pad"], dtype=np.int64)
        att = np.zeros((len(seqs), T), dtype=np.int64)
        for k, s in enumerate(seqs):
            ids[k, :len(s)] = s
            att[k, :len(s)] = 1
        return ids, att


class TemplateEncoder:
    """A reward model with its own tokenizer and chat template (an imported OpenRLHF critic): the pair is rendered
    as [user prompt, assistant response] by the template; the texts are tokenized as text (`split_special_tokens`)
    between the template's own tokens, so user text that spells a special token stays text. Same truncation and
    right padding as ChatEncoder."""

    def __init__(self, tokenizer_dir: str | Path, max_length: int = 512):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if not self.tok.chat_template:
            raise ValueError(f"{tokenizer_dir}: rm_config.json asks for chat_template encoding; the tokenizer has none")
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad = int(pad or 0)
        self.max_length = max_length

    def _ids(self, prompt: str, response: str) -> list[int]:
        nonce = os.urandom(6).hex()
        texts = (prompt, response)
        marks = [f"\x00{nonce}-{i}\x00" for i in range(2)]
        msgs = [{"role": "user", "content": marks[0]}, {"role": "assistant", "content": marks[1]}]
        text = self.tok.apply_chat_template(msgs, tokenize=False)
        if any(text.count(k) != 1 for k in marks):  # a template that rewrites contents: plain rendering
            text = self.tok.apply_chat_template([{**m, "content": t} for m, t in zip(msgs, texts)], tokenize=False)
            return self.tok.encode(text, add_special_tokens=False)
        ids: list[int] = []
        pos = 0
        for k, t in zip(marks, texts):
            i = text.index(k, pos)
            ids += self.tok.encode(text[pos:i], add_special_tokens=False)
            ids += self.tok.encode(t, add_special_tokens=False, split_special_tokens=True)
            pos = i + len(k)
        return ids + self.tok.encode(text[pos:], add_special_tokens=False)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        seqs = []
        for p, r in zip(prompts, responses):
            s = self._ids(p, r)
            if len(s) > self.max_length:
                s = s[:2] + s[-(self.max_length - 2):]
            seqs.append(s)
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), self.pad, dtype=np.int64)
        att = np.zeros((len(seqs), T), dtype=np.int64)
        for k, s in enumerate(seqs):
            ids[k, :len(s)] = s
            att[k, :len(s)] = 1
        return ids, att


# --- backends -------------------------------------------------------------------------------------------------
class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_path: Path, threads: int = 2):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, att: np.ndarray) -> np.ndarray:
        return np.asarray(self.sess.run(["scores"], {"input_ids": ids, "attention_mask": att})[0], dtype=np.float64)


class TorchBackend:
    """LlamaForSequenceClassification from `hf/`, score read at the last real token (training's ScoreWrapper)."""

    name = "torch"

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), dtype=torch.float32).eval()

    def __call__(self, ids: np.ndarray, att: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            i, a = torch.from_numpy(ids), torch.from_numpy(att)
            h = self.model.model(input_ids=i, attention_mask=a).last_hidden_state
            s = self.model.score(h).squeeze(-1)
            last = (a.sum(-1) - 1).clamp(min=0)
            return s.gather(1, last.unsqueeze(1)).squeeze(1).double().numpy()


def load_backend(model_dir: str | Path, backend: str = "auto", threads: int = 2):
    d = Path(model_dir)
    onnx = _find(d, ONNX_NAMES)
    if backend in ("auto", "onnx") and onnx is not None:
        try:
            return OnnxBackend(onnx, threads)
        except ImportError:
            if backend == "onnx":
                raise
            log.warning("onnxruntime not importable; audit RM falls back to torch")
    elif backend == "onnx":
        raise FileNotFoundError(f"no {' or '.join(ONNX_NAMES)} in {d}")
    hf = d / "hf" if (d / "hf" / "config.json").exists() else d
    return TorchBackend(hf)


class RewardScorer:
    """Synchronous batch scoring: encoder + backend + the 0–1 mapping. Thread-compatible (one caller at a time)."""

    def __init__(self, model_dir: str | Path, backend: str = "auto", threads: int = 2, max_length: int = 512,
                 model_version: str | None = None):
        d = Path(model_dir)
        cfg_path = d / "rm_config.json"
        self.rm_config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.mu_ref = float(self.rm_config.get("mu_ref", 0.0))
        self.model_version = model_version or str(self.rm_config.get("version") or d.resolve().name)
        tj = _find(d, ("tokenizer.json",))
        if tj is None:
            raise FileNotFoundError(f"no tokenizer.json in {d} or {d / 'hf'}")
        if self.rm_config.get("encoding") == "chat_template":  # an imported critic (training.import_checkpoint)
            self.encoder: ChatEncoder | TemplateEncoder = TemplateEncoder(tj.parent, max_length)
        else:
            self.encoder = ChatEncoder(tj, max_length)
        self.backend = load_backend(d, backend, threads)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        ids, att = self.encoder.encode(prompts, responses)
        return self.backend(ids, att)

    def reward01(self, score: float) -> float:
        z = score - self.mu_ref
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# --- the asynchronous batcher ---------------------------------------------------------------------------------
class AuditScorer:
    """Sampled, batched, off-the-request-path scoring. Create and use inside one event loop."""

    def __init__(self, config: AuditConfig, registry: CollectorRegistry | None = None,
                 scorer: RewardScorer | None = None):
        self.cfg = config
        self.scorer = scorer or RewardScorer(config.model_dir, config.backend, config.threads, config.max_length,
                                             config.model_version)
        self.model_version = self.scorer.model_version
        self.backend_name = self.scorer.backend.name
        self._pending: list[AuditItem] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligngate-audit")
        self._listeners: list[Callable[[AuditItem, AuditResult], None]] = []
        self.calls = 0  # model calls (batches)
        self.scored = 0
        self.dropped = 0
        self.failed = 0
        r = registry if registry is not None else CollectorRegistry()
        self._m_scored = Counter("aligngate_audit_scored", "Answers scored by the audit reward model", registry=r)
        self._m_dropped = Counter("aligngate_audit_dropped", "Audit items dropped (queue full)", registry=r)
        self._m_batch = Histogram("aligngate_audit_batch_size", "Audit batch sizes", registry=r,
                                  buckets=(1, 2, 4, 8, 16, 32, 48, 64, 128))
        self._m_latency = Histogram("aligngate_audit_batch_seconds", "Audit model call time", registry=r,
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

    # --- request path ---------------------------------------------------------------------------------------
    def should_audit(self, request_id: str | None) -> bool:
        """Deterministic sampling by request id (a retried request gets the same decision)."""
        f = self.cfg.fraction
        if f >= 1.0:
            return True
        if f <= 0.0:
            return False
        if request_id is None:
            import random

            return random.random() < f
        h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
        return h / 2 ** 64 < f

    def maybe_submit(self, prompt: str, response: str, version: str | None = None, request_id: str | None = None,
                     meta: dict[str, Any] | None = None, force: bool = False) -> asyncio.Future | None:
        """Submit if sampled (or `force`, e.g. the client asked to wait for the audit score)."""
        if not force and not self.should_audit(request_id):
            return None
        return self.submit(prompt, response, version, request_id, meta)

    def submit(self, prompt: str, response: str, version: str | None = None, request_id: str | None = None,
               meta: dict[str, Any] | None = None) -> asyncio.Future | None:
        """Queue one answer; returns a future of `AuditResult`, or None if dropped (queue full). Non-blocking."""
        if len(self._pending) >= self.cfg.max_pending:
            self.dropped += 1
            self._m_dropped.inc()
            return None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append(AuditItem(prompt, response, version, request_id, meta, fut))
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="aligngate-audit-batcher")
        if len(self._pending) == 1 or len(self._pending) >= self.cfg.max_batch:
            self._wake.set()
        return fut

    async def score(self, prompt: str, response: str, version: str | None = None) -> AuditResult:
        fut = self.submit(prompt, response, version)
        if fut is None:
            raise RuntimeError("audit queue full")
        return await fut

    def add_listener(self, cb: Callable[[AuditItem, AuditResult], None]) -> None:
        """Called on the loop for every scored item (e.g. `monitor.observe_audit`, metrics, the response log)."""
        self._listeners.append(cb)

    # --- batcher ----------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            if len(self._pending) < self.cfg.max_batch:  # let a burst gather, a few ms at most
                deadline = loop.time() + self.cfg.max_wait_ms / 1000
                while len(self._pending) < self.cfg.max_batch and loop.time() < deadline:
                    try:
                        await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                    self._wake.clear()
            while self._pending:
                batch = self._pending[:self.cfg.max_batch]
                del self._pending[:len(batch)]
                await self._score_batch(loop, batch)

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list[AuditItem]) -> None:
        live = [it for it in batch if not it.future.cancelled()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._pool, self.scorer.score,
                                                [it.prompt for it in live], [it.response for it in live])
        except Exception as e:  # noqa: BLE001 — fail these futures, keep the batcher alive
            self.failed += len(live)
            log.warning("audit batch of %d failed: %s", len(live), e)
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
                    it.future.exception()  # retrieved: no "never retrieved" noise when nobody awaited
            return
        self.calls += 1
        self._m_batch.observe(len(live))
        self._m_latency.observe(time.perf_counter() - t0)
        for it, s in zip(live, scores):
            res = AuditResult(float(s), self.scorer.reward01(float(s)), self.model_version, len(live))
            self.scored += 1
            self._m_scored.inc()
            if not it.future.done():
                it.future.set_result(res)
            for cb in self._listeners:
                try:
                    cb(it, res)
                except Exception:  # noqa: BLE001
                    log.exception("audit listener failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for it in self._pending:
            if not it.future.done():
                it.future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- benchmark ------------------------------------------------------------------------------------------------
def benchmark_backends(model_dir: str | Path, batch: int = 32, response_len: int = 32, repeats: int = 20,
                       threads: int = 2, seed: int = 0) -> dict:
    """Throughput (sequences/s) of onnxruntime and torch on the same batches; same inputs, best of `repeats`."""
    import random

    rng = random.Random(seed)
    prompts = [f"add {rng.randint(10, 99)} {rng.randint(10, 99)}" for _ in range(batch)]
    responses = ["".join(rng.choice("abcdefgh 0123456789") for _ in range(response_len)) for _ in range(batch)]
    out: dict[str, Any] = {"batch": batch, "response_chars": response_len, "repeats": repeats, "threads": threads}
    scorers = {name: RewardScorer(model_dir, name, threads) for name in ("onnx", "torch")}
    ids, att = scorers["onnx"].encoder.encode(prompts, responses)
    out["seq_len"] = int(ids.shape[1])
    times: dict[str, list[float]] = {"onnx": [], "torch": []}
    scores = {}
    for name, s in scorers.items():  # warm-up
        for _ in range(3):
            s.backend(ids, att)
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)  # same thread budget as onnxruntime's intra-op pool
    try:
        for _ in range(repeats):  # interleaved, so load from other jobs on the machine hits both alike
            for name, s in scorers.items():
                t0 = time.perf_counter()
                scores[name] = s.backend(ids, att)
                times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    for name, ts in times.items():
        ts.sort()
        out[name] = {"median_s": ts[len(ts) // 2], "best_s": ts[0], "seq_per_s": batch / ts[len(ts) // 2]}
    out["speedup_onnx_over_torch"] = out["torch"]["median_s"] / out["onnx"]["median_s"]
    out["max_abs_diff"] = float(np.max(np.abs(scores["onnx"] - scores["torch"])))
    out["onnx_default"] = out["speedup_onnx_over_torch"] >= 1.3
    return out
