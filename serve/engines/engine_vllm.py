"""In-process engine: one vLLM `AsyncLLM` (continuous batching, engine core in its own process) per version.

The gateway renders the chat template and counts prompt tokens itself, so it can refuse an over-long prompt
with a clear 400 before anything is queued, and hands vLLM token ids (no second tokenisation).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from collections.abc import AsyncIterator

from vllm.logprobs import FlatLogprobs

from serve.engines import engine_procs

from serve.vllm_ext import vllm_patches
from serve.api.chat_prompt import chat_prompt_ids  # noqa: F401  (re-exported: callers import it from here)
from serve.config import VersionSpec
from serve.engines.engine import (
    Delta,
    Engine,
    EngineBadRequest,
    EngineError,
    EngineNotReady,
    GenerationRequest,
    Step,
    TokenLogprob,
)
from serve.api import tools
from serve.logs import get_logger
from serve.api.structured import control_char_token_ids, under_bans
from serve.api.tool_calls import ToolRequest, ToolSupport, tool_support
from serve.vllm_ext.value_table import CHANNEL_ENV, ValueTable

log = get_logger(__name__)

try:  # vLLM's request-validation errors (VLLMValidationError) are not ValueErrors in recent releases
    from vllm.exceptions import VLLMClientError

    CLIENT_ERRORS: tuple[type[Exception], ...] = (ValueError, VLLMClientError)
except ImportError:  # older vLLM: plain ValueError
    CLIENT_ERRORS = (ValueError,)


class VLLMEngine(Engine):
    restartable = True  # serve.engines.supervisor restarts it when its engine core dies

    def __init__(self, spec: VersionSpec, cache_dir: str | Path | None = None):
        self.llm = None
        self.cache_dir = cache_dir  # where a configured TRL checkpoint is imported to (serve/checkpoints.py)
        super().__init__(spec.name)
        self.spec = spec
        self.tokenizer = None
        self.max_model_len = spec.max_model_len
        self.slots = None
        self.values: ValueTable | None = None  # the shared-memory read-out (serve.vllm_ext.value_table), when in use
        self.tool_support: ToolSupport | None = None  # tool parser and template kind (serve.api.tool_calls)
        self._json_bans: dict[bool, dict[int, float]] = {}  # serve.api.structured.control_char_token_ids, on first use
        self._warming = False
        self.sampling_defaults: dict = {}

    # `ready` also reads vLLM's own dead-engine flag (set by its monitor thread the moment the EngineCore process
    # exits), so routing moves new requests to stable at once instead of waiting for the supervisor's next tick.
    @property
    def ready(self) -> bool:
        return self._ready and self.llm is not None and not self.llm.errored

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    @property
    def down_reason(self) -> str | None:
        llm = self.llm
        if llm is None or not llm.errored:
            return None
        manager = getattr(llm.engine_core.resources, "engine_manager", None)
        failed = getattr(manager, "failed_proc_name", None)
        codes = getattr(manager, "finished_procs", dict)() if manager else {}
        return f"engine core died ({failed or 'EngineCore'}, exit codes {codes or 'unknown'})"

    @property
    def value_channel(self) -> str | None:
        """How the in-pass value leaves the engine: "shm" (serve.vllm_ext.value_table), "logprobs", or None (no value head)."""
        return None if self.slots is None else "shm" if self.values is not None else "logprobs"

    @property
    def engine_pid(self) -> int | None:
        """The EngineCore process (ops and chaos tests: the process to watch, or to kill)."""
        try:
            return self.llm.engine_core.resources.engine_manager.processes[0].pid
        except (AttributeError, IndexError, TypeError):
            return None

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def _prepare(self) -> None:
        """Before anything is built: a TRL checkpoint given in ALIGNGATE_VERSIONS / the YAML is imported into the
        cache (serve/checkpoints.py), and a vLLM whose patched internals moved makes this engine refuse to start,
        naming the installed and the expected vLLM (serve/vllm_ext/vllm_compat.py)."""
        from serve.vllm_ext import vllm_compat

        spec = self.spec
        if self.cache_dir is not None:
            from serve.checkpoints import servable_dir

            model, layout = await asyncio.to_thread(servable_dir, spec.model, self.cache_dir)
            if layout:
                log.info("checkpoint_imported", version=self.name, layout=layout, source=spec.model, dir=model)
                self.spec = spec.model_copy(update={"model": model})
        await asyncio.to_thread(vllm_compat.ensure_compatible)

    async def start(self) -> None:
        await self._prepare()
        # the first import of vLLM's engine takes seconds: do it off the event loop (Redis, /health keep answering)
        await asyncio.to_thread(_import_engine_modules)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from serve.vllm_ext.value_slots import read_value_slots
        from serve.vllm_ext.vllm_model import BASES, value_head_architecture

        spec = self.spec
        self.slots = await asyncio.to_thread(read_value_slots, spec.model)
        vllm_patches.apply()
        overrides = None
        if self.slots is not None:
            arch = (json.loads((Path(spec.model) / "config.json").read_text()).get("architectures") or [""])[0]
            with_head = value_head_architecture(arch)  # the class serve.vllm_ext.vllm_plugin registered for it
            if with_head is not None:
                overrides = {"architectures": [with_head]}
            else:
                log.warning("value_head_unsupported_architecture", version=self.name, architecture=arch,
                            supported=sorted(BASES), detail="served without the in-pass value")
                self.slots = None
        self.has_value_head = self.slots is not None
        # Read by the engine-core process when it is spawned; each engine gets its own KV budget.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(spec.kv_cache_gib)
        # vLLM forks its engine core (and the core its worker) by default. The gateway would fork from a worker
        # thread of a process that already runs the event loop and, from the second version on, another engine's
        # threads: a lock held by one of them at the fork stays held in the child. Spawn costs a few seconds of
        # imports per process and cannot inherit a held lock. (It did not cure the start-up stall CI shows in
        # tests/test_scale_out.py; that cause is still open: issue 21, tests/stall.py.) An explicit
        # VLLM_WORKER_MULTIPROC_METHOD is left alone.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        args = AsyncEngineArgs(
            model=spec.model,
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            max_num_seqs=spec.max_num_seqs,
            enforce_eager=spec.enforce_eager,
            disable_log_stats=True,
            enable_prefix_caching=True,
            structured_outputs_config=structured_outputs_config(spec.structured_outputs_backend),
            **({"hf_overrides": overrides} if overrides else {}),
        )
        log.info("engine_starting", version=self.name, model=spec.model, value_head=self.has_value_head)
        # Building the engine blocks for ~20 s (it spawns and waits for the engine core): keep the event loop
        # free meanwhile so /health answers and requests get a 503 instead of hanging.
        engine_procs.track_spawns()  # which processes this start spawns: a start past its deadline is ended
        token = engine_procs.starting.set(self.name)  # copied into the to_thread context
        try:
            self.llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        finally:
            engine_procs.starting.reset(token)
        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, spec.model)
        self.max_model_len = self.llm.model_config.max_model_len
        self.vocab_size = self.llm.model_config.get_vocab_size()
        self.tool_support = await asyncio.to_thread(tool_support, spec.tool_parser, self.tokenizer,
                                                    self.llm.get_tokenizer(), self.llm.model_config,
                                                    spec.tool_strict_level,
                                                    spec.structured_outputs_backend != "auto")
        # The checkpoint's own sampling defaults (generation_config.json: temperature, top_p, top_k, ...) for what
        # a request leaves unset, as vLLM's own server does. Its eos list needs nothing here: vLLM's input
        # processor adds generation_config's eos_token_id list and the tokenizer's eos to every request's stop ids.
        self.sampling_defaults = self.llm.model_config.get_diff_sampling_param()
        # async scheduling (vLLM's GPU default) hands sampled tokens over without a host sync; reading the values
        # on the host every step would add one, so there the logprobs read-out stays
        if (self.slots is not None and os.environ.get(CHANNEL_ENV, "shm") == "shm"
                and not self.llm.vllm_config.scheduler_config.async_scheduling):
            self.values = ValueTable(self.name, rows=2 * spec.max_num_seqs, positions=self.max_model_len)
        self._warming = True  # generate() serves the warm-up requests; `ready` stays False (no routing yet)
        try:
            warm_s = await self._warm_up()
        finally:
            self._warming = False
        self.ready = True
        log.info("engine_ready", version=self.name, max_model_len=self.max_model_len, warm_up_s=round(warm_s, 3))

    async def _warm_up(self) -> float:
        """Real generations (value read-out included) before the version is announced ready: vLLM's first
        request on a fresh engine costs seconds on CPU (measured 5.9 s, then 5-10 ms), and the next few new
        prompt lengths and batch sizes still cost tens to hundreds of ms; a canary's first users - and its latency
        gate - must not pay that. A few prompt lengths one at a time, then a small concurrent batch."""
        t0 = time.perf_counter()

        async def one(i: int, words: int) -> None:
            req = GenerationRequest(request_id=f"warmup-{self.name}-{i}-{os.urandom(4).hex()}", kind="completion",
                                    prompt=" ".join(["warm up"] * words), max_tokens=8, temperature=1.0)
            async for _ in self.generate(req):
                pass

        if self.values is not None:
            await self._check_value_channel()
        # "warm up " is at most 8 tokens (a character tokenizer); the longest prompt leaves room for its 8 new
        # tokens in a short context (max_model_len 256 once failed every start: 255 prompt tokens + 8)
        cap = max(1, (self.max_model_len - 8 - 16) // 8)
        for i, words in enumerate((1, 8, 32)):
            await one(i, min(words, cap))
        await asyncio.gather(*(one(10 + i, min(2 + 3 * i, cap)) for i in range(4)))
        return time.perf_counter() - t0

    async def _check_value_channel(self) -> None:
        """One request read both ways at once (the table and the slots' logprobs): the table is kept only if
        every position was written and equals the logprobs read-out; else the engine falls back to logprobs."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        table, row = self.values, self.values.acquire()
        params = SamplingParams(max_tokens=6, temperature=1.0, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY,
                                **value_params(self.slots, read=True))
        params.extra_args = {**params.extra_args, **table.extra_args(row)}
        got = None
        try:
            prompt = TokensPrompt(prompt_token_ids=self.tokenizer.encode("check the value channel"))
            async for out in self.llm.generate(prompt, params, f"value-check-{self.name}-{os.urandom(4).hex()}"):
                got = out.outputs[0]
            want, _ = _slot_values(got.logprobs, self.slots) if got is not None else ([], None)
            have, _ = table.read(row, 0, len(want))
        finally:
            table.release(row)
        worst = max((abs(a - b) for a, b in zip(have, want)), default=float("nan"))
        if not want or not worst <= 1e-4:  # NaN (never written) fails this too
            log.warning("value_channel_fallback", version=self.name, reason="the worker did not write the table "
                        "(vLLM internals moved?); values go through logprobs", max_abs_diff=worst)
            self.values = None
            table.close()
        else:
            log.info("value_channel", version=self.name, channel="shm", rows=table.rows, checked_positions=len(want))

    async def stop(self) -> None:
        self.ready = False
        if self.llm is not None:
            llm, self.llm = self.llm, None
            await asyncio.to_thread(llm.shutdown)
        engine_procs.forget_stopped(self.name)  # anything vLLM's shutdown (or a cancelled start) left running
        if self.values is not None:
            self.values.close()
            self.values = None

    async def alive(self) -> bool:
        """Cheap liveness (no generation): vLLM has not flagged the engine core dead."""
        return self.llm is not None and not self.llm.errored

    async def restart(self) -> None:
        """Shut the dead `AsyncLLM` down (a no-op for most of it: vLLM already cleaned up when the core died) and
        build a new one. Requests meanwhile see `ready` False: routed ones go to stable, explicit ones get 503."""
        await self.stop()
        self.start_error = None
        await self.start()

    # --- requests ----------------------------------------------------------------------------------------
    def _prompt_ids(self, req: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if req.kind != "chat":
            return tok.encode(req.prompt or "", add_special_tokens=True)
        messages = req.messages
        if not req.tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            return chat_prompt_ids(tok, messages)
        if self.tool_support is not None and self.tool_support.native:
            messages = tools.native_messages(messages)
            tools.check_no_special_tokens(tok, req.tools, messages)
            return chat_prompt_ids(tok, messages, tools=req.tools)
        return chat_prompt_ids(tok, tools.fallback_messages(messages, req.tools))

    def _value_params(self, req: GenerationRequest, row: int | None) -> dict:
        """Read the value through the shared-memory table (`row`), or else ask vLLM for the reserved slots'
        log-probabilities (unless the client wants logprobs: vLLM returns one or the other, and the client's wins;
        the reward then comes from a finalize step); either way keep the slots out of sampling (they are at -1000
        already; the bias is belt and braces)."""
        if row is not None:
            return {**value_params(self.slots, read=False), "extra_args": self.values.extra_args(row)}
        return value_params(self.slots, read=req.with_values and req.logprobs is None)

    def _table_row(self, req: GenerationRequest) -> int | None:
        """A row of the value table for this request, when the table is in use and the request is one it serves
        (n = 1: vLLM's child requests of n > 1 would share the row; no client logprobs: those take the slots'
        place, and the reward then comes from a finalize step)."""
        if self.values is None or not req.with_values or req.logprobs is not None or req.n != 1:
            return None
        return self.values.acquire()

    def _logit_bias(self, req: GenerationRequest, value_kw: dict, constrained: bool, forced: bool) -> dict:
        """The client's logit_bias, under the bans of a constrained (JSON) request (a client bias that would lift
        a banned token is a 400: serve.api.structured.under_bans), under the value slots' -100 (which always wins
        for the slot ids)."""
        user = req.logit_bias or {}
        bad = [t for t in user if not 0 <= t < self.vocab_size]
        if bad:
            raise EngineBadRequest(f"logit_bias names token id {bad[0]}, outside this model's vocabulary "
                                   f"(0..{self.vocab_size - 1})", param="logit_bias", code="invalid_value")
        bans: dict[int, float] = {}
        if constrained:  # forced: the answer is JSON or a call only, so raw tabs and newlines go too
            if forced not in self._json_bans:
                self._json_bans[forced] = {i: -100.0 for i in control_char_token_ids(self.tokenizer, forced)}
            bans = self._json_bans[forced]
        if not user and not bans:
            return value_kw
        merged = under_bans(user, bans, "this constrained request (JSON response_format or tool call)")
        return {**value_kw, "logit_bias": {**merged, **value_kw.get("logit_bias", {})}}

    def _sampling_params(self, req: GenerationRequest, prompt_len: int, row: int | None = None,
                         tool_req: ToolRequest | None = None):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        room = self.max_model_len - prompt_len
        if room < 1:
            raise EngineBadRequest(
                f"the prompt has {prompt_len} tokens and this model's context is {self.max_model_len} tokens; "
                "shorten the messages",
                param="messages" if req.kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        if req.max_tokens is not None and req.max_tokens > room:
            raise EngineBadRequest(
                f"max_tokens is {req.max_tokens} but only {room} tokens fit: the prompt has {prompt_len} tokens "
                f"and the context is {self.max_model_len}; lower max_tokens or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        structured = tool_req.structured_outputs if tool_req is not None else None
        extra: dict = self._logit_bias(req, self._value_params(req, row), structured is not None,
                                       tool_req is not None and tool_req.forced)
        if tool_req is not None:
            extra["structured_outputs"] = structured
            extra["skip_special_tokens"] = tool_req.skip_special_tokens
        dflt = self.sampling_defaults
        try:
            return SamplingParams(
                n=req.n,
                max_tokens=req.max_tokens if req.max_tokens is not None else min(room, dflt.get("max_tokens", room)),
                temperature=dflt.get("temperature", 1.0) if req.temperature is None else req.temperature,
                top_p=dflt.get("top_p", 1.0) if req.top_p is None else req.top_p,
                top_k=dflt.get("top_k", 0) or 0,
                min_p=dflt.get("min_p", 0.0),
                presence_penalty=dflt.get("presence_penalty", 0.0) if req.presence_penalty is None else req.presence_penalty,
                frequency_penalty=(dflt.get("frequency_penalty", 0.0) if req.frequency_penalty is None
                                   else req.frequency_penalty),
                stop=req.stop or None,
                seed=req.seed,
                logprobs=req.logprobs,
                ignore_eos=req.ignore_eos,
                min_tokens=req.min_tokens or 0,
                repetition_penalty=req.repetition_penalty or dflt.get("repetition_penalty", 1.0),
                output_kind=RequestOutputKind.DELTA,
                **extra,
            )
        except CLIENT_ERRORS as e:  # vLLM's own argument checks, e.g. n > 1 with temperature 0 (schemathesis: 500)
            raise EngineBadRequest(f"invalid sampling parameters: {e}", code="invalid_value") from None

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Step]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if not (self.ready or self._warming) or self.llm is None:
            raise EngineNotReady(f"version {self.name!r} is not ready")
        ids = self._prompt_ids(req)
        if not ids:  # vLLM refuses an empty decoder prompt with a ValueError (schemathesis: it was a 500)
            raise EngineBadRequest("the prompt is empty; send at least one token of text",
                                   param="messages" if req.kind == "chat" else "prompt", code="invalid_value")
        # structured outputs (response_format) and tools: vLLM's request conversion and tool parser (serve.api.tool_calls)
        tool_req = ToolRequest(self.tool_support, req) if req.response_format or req.tools else None
        table, row = self.values, self._table_row(req)
        try:
            params = self._sampling_params(req, len(ids), row, tool_req)
        except BaseException:
            if row is not None:
                table.release(row)
            raise
        completion_tokens = 0
        read_values = params.logprob_token_ids is not None
        s = self.slots
        stream = self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, req.request_id)
        try:
            async for out in stream:
                deltas = []
                for o in out.outputs:
                    n_new = len(o.token_ids)
                    d = Delta(o.index, o.text, n_new, None, o.finish_reason, list(o.token_ids))
                    if req.logprobs is not None:
                        d.logprobs = _logprobs(o.token_ids, o.logprobs, req.logprobs)
                    elif row is not None and n_new:
                        values, entropies = table.read(row, completion_tokens, completion_tokens + n_new)
                        if values[-1] == values[-1]:
                            d.values, d.entropies = values, entropies
                        elif self.values is table:  # NaN: the worker stopped writing (its log says why)
                            log.warning("value_channel_fallback", version=self.name, reason="unwritten table cell; "
                                        "later requests read the values through logprobs")
                            self.values = None
                            table.close()  # the file goes; this process's mapping stays for requests under way
                    elif read_values and o.logprobs:
                        d.values, d.entropies = _slot_values(o.logprobs, s)
                    completion_tokens += n_new
                    deltas.append(tool_req.feed(d, ids) if tool_req is not None else d)
                yield Step(deltas, len(ids), completion_tokens, out.finished, ids if out.finished else None)
        except EngineDeadError as e:
            self.ready = False
            raise EngineError(f"version {self.name!r}: engine died: {e}") from e
        except CLIENT_ERRORS as e:  # vLLM's request validation (a schema its grammar backend refuses, ...)
            # raised when the request is added: about its grammar, if it has one
            param = "response_format" if req.response_format else "tools" if tool_req and tool_req.calls else None
            raise EngineBadRequest(str(e), param=param) from e
        finally:
            # Closing vLLM's generator early (client gone, consumer stopped) aborts the sequence in the engine.
            try:
                await stream.aclose()
            finally:
                if row is not None:
                    table.release(row)

    async def score(self, prompt_token_ids: list[int], response_token_ids: list[int]) -> tuple[float, float | None] | None:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        s = self.slots
        ids = list(prompt_token_ids) + list(response_token_ids)
        if s is None or self.llm is None or len(ids) + 1 > self.max_model_len:
            return None
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=s.ids(),
                                logit_bias={i: -100.0 for i in s.ids()}, output_kind=RequestOutputKind.FINAL_ONLY)
        rid = f"score-{os.urandom(6).hex()}"
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, rid):
            p = out.outputs[0].logprobs[0]
            return p[s.a].logprob - p[s.b].logprob, (p[s.c].logprob - p[s.b].logprob if s.c is not None else None)
        return None

    def unfinished(self) -> int | None:
        return self.llm.output_processor.get_num_unfinished_requests() if self.llm is not None else None

    def describe(self) -> dict:
        return {**super().describe(), "engine_pid": self.engine_pid}

    def ready_details(self) -> dict:
        # the engine core's pid (the process to watch), and how the in-pass value is read
        return {k: v for k, v in (("engine_pid", self.engine_pid), ("value_channel", self.value_channel))
                if v is not None}

    async def probe(self, timeout_s: float) -> None:
        req = GenerationRequest(request_id=f"probe-{self.name}-{os.urandom(4).hex()}", kind="completion",
                                prompt="ok", max_tokens=1, temperature=0.0)

        async def one() -> None:
            async for _ in self.generate(req):
                pass

        await asyncio.wait_for(one(), timeout_s)


def structured_outputs_config(backend: str):
    """Engine-wide structured-output settings (serve/api/structured.py says why JSON is compact)."""
    from vllm.config import StructuredOutputsConfig

    if backend == "auto":
        return StructuredOutputsConfig(backend="auto")
    return StructuredOutputsConfig(backend=backend, disable_any_whitespace=True)


def value_params(slots, read: bool) -> dict:
    """SamplingParams keywords for a value-head model: the slots kept out of sampling, and with `read` their
    per-position read-out (flat lists, no detokenization of the slot ids: `serve.vllm_ext.vllm_patches`)."""
    if slots is None:
        return {}
    out: dict = {"logit_bias": {i: -100.0 for i in slots.ids()}}
    if read:
        out["logprob_token_ids"] = slots.ids()
        out["flat_logprobs"] = True  # primitive lists, no Logprob object per id and position
        out["extra_args"] = {vllm_patches.FLAG: True}  # no detokenization of the slot ids (vllm_patches)
    return out


def _import_engine_modules() -> None:
    import transformers  # noqa: F401
    import vllm.engine.arg_utils  # noqa: F401
    import vllm.v1.engine.async_llm  # noqa: F401


def _slot_values(logprobs, s) -> tuple[list[float], list[float] | None]:
    """value = lp[A] - lp[B], entropy = lp[C] - lp[B] per position, from vLLM's flat logprob lists."""
    if isinstance(logprobs, FlatLogprobs):
        ids, lps = logprobs.token_ids, logprobs.logprobs
        positions = [dict(zip(ids[a:b], lps[a:b])) for a, b in zip(logprobs.start_indices, logprobs.end_indices)]
    else:  # dict per position
        positions = [{t: lp.logprob for t, lp in p.items()} for p in logprobs]
    values = [p[s.a] - p[s.b] for p in positions]
    entropies = [p[s.c] - p[s.b] for p in positions] if s.c is not None else None
    return values, entropies


def _logprobs(token_ids, logprobs, k: int) -> list[TokenLogprob]:
    """vLLM's per-position {token_id: Logprob} dicts -> the chosen token and its alternatives, best first."""
    result = []
    for tid, pos in zip(token_ids, logprobs or []):
        chosen = pos.get(tid)
        top = sorted(pos.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)
        result.append(
            TokenLogprob(
                token=(chosen.decoded_token or "") if chosen else "",
                logprob=float(chosen.logprob) if chosen else float("-inf"),
                top=[(lp.decoded_token or "", float(lp.logprob)) for lp in top[:k]],
            )
        )
    return result
