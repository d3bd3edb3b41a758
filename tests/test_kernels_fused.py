"""Fused policy heads (final RMSNorm -> [LM head | value] + entropy), Liger-Kernel style.

The spec is re-implemented here (not imported), every implementation is checked against it on one realistic
and one odd shape with per-dtype tolerances, seed 42. The value is computed in fp32 whatever the input dtype, so
it is held to 1e-3 of the fp32 spec in every dtype.

Triton runs under `TRITON_INTERPRET=1` in a subprocess (this file run as a script, see the bottom), because the
variable must be set before Triton is imported and the pytest process must not be switched into interpreter
mode for everyone else. bf16 is not run through the interpreter (its bf16 matmul is unreliable there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.dispatch import BACKEND_ENV, fused_heads, resolve_backend
from kernels.fused_torch import entropy_fused, fused_heads_torch
from kernels.module import FusedHeads
from kernels.reference import decode_value_slots, decode_value_slots_from_logprobs, encode_value_slots, heads_reference
from kernels.value_head import ValueHead
from kernels.weights import HeadWeights

SEED = 42
EPS = 1e-5
SHAPES = [(64, 256, 320), (7, 96, 263)]  # (T, H, V): realistic (tiny policy, batch of 64) and odd
SLOTS = (3, 250)  # reserved ids A, B inside both vocabularies
VALUE_ATOL = 1e-3  # the target, against the fp32 spec, in every dtype
# (logits atol, logits rtol, entropy atol) per dtype
TOL = {
    torch.float32: (1e-5, 1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2, 5e-3),
    torch.bfloat16: (6e-2, 2e-2, 5e-2),
}


# --- the spec --------------------------------------------------------------------------------------------------


def spec_heads(h, g, eps, W, w, b, logits_dtype=None, slots=None):
    """RMSNorm in fp32 -> logits (input dtype or fp32) | value fp32 from the fp32 norm | entropy fp32."""
    out_dtype = logits_dtype or h.dtype
    x = h.float()
    if g is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.float()
    logits = x @ W.float().T if out_dtype == torch.float32 else (x.to(out_dtype) @ W.to(out_dtype).T)
    value = (x @ w.float().reshape(-1, 1)).squeeze(-1) + (b.float() if b is not None else 0.0)
    if slots is not None:
        logits = logits.clone()
        logits[:, slots[0]] = value - 1000.0
        logits[:, slots[1]] = -1000.0
    logp = torch.log_softmax(logits.float(), -1)
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1)
    return logits, value, entropy


def make_inputs(T, H, V, dtype, seed=SEED):
    """Pre-norm hidden states with a realistic spread (RMS ~3, a few outliers), weights in the model dtype."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(T, H, generator=gen) * 3.0
    h[:, 0] *= 10.0  # an outlier channel, as real residual streams have
    g = 0.5 + torch.rand(H, generator=gen)
    W = torch.randn(V, H, generator=gen) * 2.0 / H**0.5  # logits of O(1..5): a peaked but not one-hot softmax
    w = torch.randn(1, H, generator=gen) / H**0.5
    b = torch.randn(1, generator=gen)
    return h.to(dtype), g.to(dtype), W.to(dtype), w, b


def assert_verbose_allclose(actual, expected, rtol=1e-5, atol=1e-8, max_print=5, name=""):
    """allclose that also fails on NaN/inf in either tensor and says where and by how much."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    problems = []
    for label, t in (("actual", a), ("expected", e)):
        if torch.isnan(t).any():
            problems.append(f"NaN in {label} at {torch.isnan(t).nonzero()[:max_print].tolist()}")
        if torch.isinf(t).any():
            problems.append(f"inf in {label} at {torch.isinf(t).nonzero()[:max_print].tolist()}")
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:max_print].tolist()
        shown = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.6g} vs {e[tuple(i)].item():.6g}" for i in idx)
        problems.append(f"{int(bad.sum())}/{bad.numel()} mismatched (max abs diff {diff.max().item():.3g}); {shown}")
    assert not problems, f"{name}: " + "; ".join(problems)


def check_heads(out, spec_same_dtype, spec_fp32_value, dtype, what=""):
    """Logits/entropy against the spec in the same dtype; the value against the fp32 spec."""
    l_atol, l_rtol, e_atol = TOL[dtype]
    logits, value, entropy = out
    assert value.dtype == torch.float32 and entropy.dtype == torch.float32
    assert_verbose_allclose(logits, spec_same_dtype[0], rtol=l_rtol, atol=l_atol, name=f"{what} logits")
    assert_verbose_allclose(value, spec_fp32_value, rtol=0, atol=VALUE_ATOL, name=f"{what} value")
    assert_verbose_allclose(entropy, spec_same_dtype[2], rtol=0, atol=e_atol, name=f"{what} entropy")


def run_case(impl, T, H, V, dtype, logits_dtype=None, slots=None, norm=True):
    h, g, W, w, b = make_inputs(T, H, V, dtype)
    g = g if norm else None
    weights = HeadWeights.prepare(g, EPS, W, w, b)
    out = impl(h, weights, logits_dtype=logits_dtype, slots=slots)
    spec = spec_heads(h, g, EPS, W, w, b, logits_dtype, slots)
    g32 = g.float() if g is not None else None
    spec32 = spec_heads(h.float(), g32, EPS, W.float(), w, b, torch.float32, slots)
    assert out.logits.dtype == (logits_dtype or dtype)
    check_heads(out, spec, spec32[1], logits_dtype or dtype, what=f"{getattr(impl, '__name__', impl)} {dtype}")
    return out


# --- reference module and torch path (in process) ------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _reference_impl(h, weights, **kw):
    return heads_reference(h, weights.norm_weight, weights.eps, weights.lm_head, weights.value_weight,
                           weights.value_bias, **kw)  # fmt: skip


@pytest.mark.parametrize("T,H,V", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_module_is_the_spec(T, H, V, dtype):
    run_case(_reference_impl, T, H, V, dtype)


@pytest.mark.parametrize("T,H,V", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fp32_head", [False, True], ids=["head=input", "head=fp32"])
def test_fused_torch(T, H, V, dtype, fp32_head):
    run_case(fused_heads_torch, T, H, V, dtype, logits_dtype=torch.float32 if fp32_head else None)


@pytest.mark.parametrize("T,H,V", SHAPES)
def test_fused_torch_without_norm(T, H, V):
    run_case(fused_heads_torch, T, H, V, torch.float32, norm=False)


@pytest.mark.parametrize("T,H,V", SHAPES)
def test_fp32_head_value_from_the_concatenated_gemm(T, H, V):
    h, g, W, w, b = make_inputs(T, H, V, torch.float32)
    assert HeadWeights.prepare(g, EPS, W, w, b).lm_head.data_ptr() == W.data_ptr()  # default: no copy of W
    weights = HeadWeights.prepare(g, EPS, W, w, b, concat=True)
    assert weights.cat is not None and weights.cat.shape == (V + 1, H)
    assert weights.lm_head.data_ptr() == weights.cat.data_ptr()  # the LM head is a view, not a second copy
    out = fused_heads_torch(h, weights)
    assert out.logits.stride(0) == V + 1  # a view of the [T, V+1] GEMM output
    spec = spec_heads(h, g, EPS, W, w, b)
    check_heads(out, spec, spec[1], torch.float32, what="concat")
    with pytest.raises(ValueError, match="fp32"):
        HeadWeights.prepare(g, EPS, W.half(), w, b, concat=True)


def test_from_buffer_shares_storage():
    h, g, W, w, b = make_inputs(*SHAPES[1], torch.float32)
    buf = torch.cat([W, w]).contiguous()
    weights = HeadWeights.from_buffer(g, EPS, buf, b)
    assert weights.lm_head.data_ptr() == buf.data_ptr() and weights.cat is buf
    check_heads(fused_heads_torch(h, weights), spec_heads(h, g, EPS, W, w, b), spec_heads(h, g, EPS, W, w, b)[1],
                torch.float32)  # fmt: skip


@pytest.mark.parametrize("T,V", [(40, 8192), (3, 70000)])
def test_entropy_chunked_path(T, V):
    """Shapes above SMALL_LOGITS take the chunked, bounded-scratch path; include the slots' -1000 columns."""
    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn(T, V, generator=gen) * 4
    z[:, :2] = -1000.0
    got = entropy_fused(z, chunk_elements=V * 7)  # uneven last chunk
    logp = torch.log_softmax(z.double(), -1)
    want = -(logp.exp() * logp).nan_to_num().sum(-1)  # fp64 spec: fp32 sums over 70k terms drift by ~1e-5
    assert_verbose_allclose(got, want, rtol=1e-5, atol=1e-5, name="entropy")
    assert_verbose_allclose(entropy_fused(z.half()), want, rtol=0, atol=5e-2, name="entropy fp16")


# --- reserved slots --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,H,V", SHAPES)
@pytest.mark.parametrize("impl", [fused_heads_torch, _reference_impl], ids=["torch", "reference"])
def test_slots_carry_the_value_through_logprobs(T, H, V, impl):
    out = run_case(impl, T, H, V, torch.float32, slots=SLOTS)
    logprobs = torch.log_softmax(out.logits, -1)
    assert (logprobs[:, list(SLOTS)].exp() == 0).all()  # never sampled
    assert_verbose_allclose(decode_value_slots_from_logprobs(logprobs, *SLOTS), out.value, rtol=0, atol=VALUE_ATOL)
    # a sampler never draws A or B
    draws = torch.multinomial(logprobs.exp(), 200, replacement=True, generator=torch.Generator().manual_seed(SEED))
    assert not torch.isin(draws, torch.tensor(SLOTS)).any()


def test_slot_helpers_roundtrip_and_refuse_low_precision():
    gen = torch.Generator().manual_seed(SEED)
    logits = torch.randn(5, 300, generator=gen)
    value = torch.randn(5, generator=gen) * 5
    enc = encode_value_slots(logits, value, *SLOTS)
    assert not torch.equal(enc, logits)  # not in place by default
    lp = torch.log_softmax(enc, -1)
    assert_verbose_allclose(decode_value_slots(lp[:, SLOTS[0]], lp[:, SLOTS[1]]), value, rtol=0, atol=VALUE_ATOL)
    with pytest.raises(TypeError, match="fp32"):
        encode_value_slots(logits.half(), value, *SLOTS)
    with pytest.raises(ValueError):
        encode_value_slots(logits, value, 7, 7)
    h, g, W, w, b = make_inputs(*SHAPES[1], torch.float16)
    with pytest.raises(TypeError, match="fp32"):
        fused_heads_torch(h, HeadWeights.prepare(g, EPS, W, w, b), slots=SLOTS)


# --- dispatcher and module -------------------------------------------------------------------------------------


def test_dispatch_picks_torch_on_cpu_and_honours_the_switch(monkeypatch):
    assert resolve_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert resolve_backend(torch.device("cpu")) == "reference"
    assert resolve_backend(torch.device("cpu"), "torch") == "torch"  # an explicit argument wins
    monkeypatch.setenv(BACKEND_ENV, "nope")
    with pytest.raises(ValueError):
        resolve_backend(torch.device("cpu"))
    monkeypatch.delenv(BACKEND_ENV)
    h, g, W, w, b = make_inputs(*SHAPES[1], torch.float32)
    weights = HeadWeights.prepare(g, EPS, W, w, b)
    a = fused_heads(h, weights, slots=SLOTS)
    r = fused_heads(h, weights, slots=SLOTS, backend="reference")
    for x, y in zip(a, r):
        assert_verbose_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_fused_heads_module_from_torch_modules():
    T, H, V = SHAPES[1]
    h, g, W, w, b = make_inputs(T, H, V, torch.float32)
    norm = torch.nn.RMSNorm(H, eps=EPS)
    lm_head = torch.nn.Linear(H, V, bias=False)
    head = ValueHead(H)
    with torch.no_grad():
        norm.weight.copy_(g)
        lm_head.weight.copy_(W)
        head.summary.weight.copy_(w)
        head.summary.bias.copy_(b)
    mod = FusedHeads(norm, lm_head, head)
    out = mod(h.reshape(1, T, H))
    assert out.logits.shape == (1, T, V) and out.value.shape == (1, T)
    with torch.no_grad():  # the module is the unfused stack, fused
        x = norm(h)
        assert_verbose_allclose(out.logits[0], lm_head(x), rtol=1e-5, atol=1e-5)
        assert_verbose_allclose(out.value[0], head(x), rtol=0, atol=VALUE_ATOL)


# --- Triton under the interpreter, in a subprocess ------------------------------------------------------------

TRITON_CASES = [
    *(dict(shape=s, dtype=d) for s in SHAPES for d in ("float32", "float16")),
    dict(shape=SHAPES[0], dtype="float16", logits_dtype="float32"),
    dict(shape=SHAPES[0], dtype="float32", slots=list(SLOTS)),
    dict(shape=SHAPES[1], dtype="float32", slots=list(SLOTS)),
    dict(shape=SHAPES[1], dtype="float32", norm=False),
]


def _case_id(c: dict) -> str:
    extra = [k for k in ("logits_dtype", "slots", "norm") if k in c]
    return "x".join(map(str, c["shape"])) + "-" + c["dtype"] + "".join(f"-{k}" for k in extra)


def _run_triton_cases() -> dict:
    """Runs in the subprocess, TRITON_INTERPRET=1 already set. Each case: ok + the failure message."""
    import kernels.dispatch  # noqa: F401
    import kernels.triton_fused as tf

    results = {"triton_imported_lazily": "triton" not in sys.modules}
    for c in TRITON_CASES:
        dt = getattr(torch, c["dtype"])
        ldt = getattr(torch, c["logits_dtype"]) if "logits_dtype" in c else None
        slots = tuple(c["slots"]) if "slots" in c else None
        try:
            run_case(tf.fused_heads_triton, *c["shape"], dt, logits_dtype=ldt, slots=slots, norm=c.get("norm", True))
            results[_case_id(c)] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - reported to the parent test
            results[_case_id(c)] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return results


@pytest.fixture(scope="module")
def triton_results() -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, __file__, "--triton-cases"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_triton_module_imports_without_triton(triton_results):
    assert triton_results["triton_imported_lazily"]


@pytest.mark.parametrize("case", TRITON_CASES, ids=_case_id)
def test_triton_interpreted(triton_results, case):
    r = triton_results[_case_id(case)]
    assert r["ok"], r.get("error")


if __name__ == "__main__" and sys.argv[1:] == ["--triton-cases"]:
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"
    torch.manual_seed(SEED)
    print(json.dumps(_run_triton_cases()))
