"""What aligngate's patches of vLLM internals expect to find, checked before they are applied.

`serve.vllm_ext.vllm_patches` replaces a few vLLM internals (not public API) for the value read-out's speed. Written for one
vLLM release (`EXPECTED_VLLM`, the version the `cpu` and `gpu` extras pin); another release may have moved or
reshaped them, and a patch wrapped around a changed signature either breaks the engine mid-request or, worse, stays
inert while everything looks fine. So every target is checked first: it exists, and its signature still has the
parameters the patch forwards, in order (`inspect.signature`); data classes the patch builds or copies still have
the fields it uses.

Failing loudly, for a production gateway: the in-process engine refuses to start (`VLLMDriftError`, shown by
`/ready` and `aligngate versions list` as the version's error, naming the installed and the expected vLLM); the
other versions keep serving. A vLLM server running aligngate's value-head class (the remote path) fails its model
load with the same message. The explicit opt-out `ALIGNGATE_VLLM_PATCHES=off` serves without any of the patches
(vLLM's own code paths: the reward still comes out of the same forward pass, through vLLM's logprobs, only slower);
it is logged at start.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from dataclasses import dataclass

from serve.logs import get_logger

log = get_logger(__name__)

EXPECTED_VLLM = "0.32.0"
"""The vLLM release the patches were written and measured against (pyproject.toml pins it in both extras)."""
PATCHES_ENV = "ALIGNGATE_VLLM_PATCHES"
"""`off`: apply none of serve.vllm_ext.vllm_patches (and skip their checks); anything else / unset: check, then apply."""


class VLLMDriftError(RuntimeError):
    """A patched vLLM internal is not what the patch was written for."""


@dataclass(frozen=True)
class Target:
    """One vLLM internal a patch relies on."""

    patch: str  # which aligngate patch needs it (for the message)
    module: str
    qualname: str  # attribute path inside the module, e.g. "Sampler.forward"
    params: tuple[str, ...] = ()  # parameters the patch passes on, in order, `self`/`cls` excluded
    fields: tuple[str, ...] = ()  # fields of a dataclass / NamedTuple the patch builds or copies

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


DETOKENIZE = "no detokenization of the value slots (vllm_patches.apply)"
SAMPLER = "slots-only sampler step (vllm_patches.apply_sampler)"
CHANNEL = "shared-memory value channel (vllm_patches.apply_value_channel)"

TARGETS: dict[str, tuple[Target, ...]] = {
    "apply": (
        Target(DETOKENIZE, "vllm.v1.engine.logprobs", "LogprobsProcessor.from_new_request", ("tokenizer", "request")),
    ),
    "apply_sampler": (
        Target(SAMPLER, "vllm.v1.sample.sampler", "Sampler.forward",
               ("logits", "sampling_metadata", "predict_bonus_token", "logprobs_mode_override")),
        Target(SAMPLER, "vllm.v1.sample.sampler", "Sampler.gather_specific_token_logprobs",
               ("logprobs", "logprob_token_ids", "sampled")),
        Target(SAMPLER, "vllm.v1.sample.metadata", "SamplingMetadata",
               fields=("max_num_logprobs", "logprob_token_ids")),
        Target(SAMPLER, "vllm.v1.outputs", "LogprobsTensors",
               fields=("logprob_token_ids", "logprobs", "selected_token_ranks")),
        Target(SAMPLER, "vllm.v1.sample.ops.logprobs", "batched_count_greater_than", ("x", "values")),
    ),
    "apply_value_channel": (
        Target(CHANNEL, "vllm.v1.worker.gpu_model_runner", "GPUModelRunner._bookkeeping_sync",
               ("scheduler_output", "sampler_output", "logits")),
    ),
}


def vllm_version() -> str:
    try:
        import vllm

        return str(getattr(vllm, "__version__", "unknown"))
    except ImportError:
        return "not installed"


def patches_enabled() -> bool:
    return os.environ.get(PATCHES_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def _fields(obj) -> tuple[str, ...]:
    if dataclasses.is_dataclass(obj):
        return tuple(f.name for f in dataclasses.fields(obj))
    return tuple(getattr(obj, "_fields", ()))  # NamedTuple


def problem(t: Target) -> str | None:
    """What is wrong with one target, or None when it looks as the patch expects."""
    try:
        obj = importlib.import_module(t.module)
    except ImportError as e:
        return f"{t.name}: module not importable ({e})"
    for part in t.qualname.split("."):
        if not hasattr(obj, part):
            return f"{t.name}: not found"
        obj = getattr(obj, part)
    if t.params:
        try:
            names = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        except (TypeError, ValueError):
            return f"{t.name}: no inspectable signature"
        if names[:len(t.params)] != list(t.params):
            return f"{t.name}: parameters are ({', '.join(names)}), the patch forwards ({', '.join(t.params)})"
    if t.fields:
        have = _fields(obj)
        missing = [f for f in t.fields if f not in have]
        if missing:
            return f"{t.name}: lacks field(s) {', '.join(missing)}"
    return None


def check(patch: str | None = None) -> list[str]:
    """The problems of one patch's targets (`patch` = a key of TARGETS), or of all of them."""
    groups = [TARGETS[patch]] if patch else list(TARGETS.values())
    return [p for ts in groups for t in ts if (p := problem(t)) is not None]


def drift_message(problems: list[str]) -> str:
    return (f"vLLM {vllm_version()} is installed, but aligngate's patches of vLLM internals were written for vLLM "
            f"{EXPECTED_VLLM} and these targets changed: {'; '.join(problems)}. Install vllm=={EXPECTED_VLLM} "
            f"(`pip install -e .[gpu]` or `.[cpu]` pins it), or set {PATCHES_ENV}=off to serve with vLLM's own code "
            f"paths (the reward still works, through vLLM's logprobs, slower).")


def require(patch: str | None = None) -> bool:
    """Before applying a patch: True to apply it; False when patches are switched off by the operator;
    raises VLLMDriftError (installed and expected vLLM in the message) when a target moved."""
    if not patches_enabled():
        return False
    problems = check(patch)
    if problems:
        raise VLLMDriftError(drift_message(problems))
    return True


def ensure_compatible() -> None:
    """Engine start (gateway process): every patch's targets, before the engine is built, so a drift is refused at
    once with one message instead of failing inside vLLM's worker processes."""
    if not patches_enabled():
        log.warning("vllm_patches_off", env=PATCHES_ENV, vllm=vllm_version(), expected=EXPECTED_VLLM)
        return
    problems = check()
    if problems:
        raise VLLMDriftError(drift_message(problems))
