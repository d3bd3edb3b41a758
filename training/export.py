"""Export a policy as a model version that vLLM (and so the gateway) loads.

A version directory holds the HF files (config.json, model.safetensors, tokenizer with its chat template,
generation_config.json), `value_head/value_head.safetensors` (written by `kernels.value_head.save_value_head`, which also
registers it in config.json) and `manifest.json`:

    {"version", "parent", "created_at", "stage", "data_hash", "config_hash", "weights_hash",
     "metrics": {...}, "gate": {"verdict": "PASS"|"FAIL", "reasons": [...], ...},
     "value_head": {"file", "source", "scale"}, "audit_reward_model": path or null, "files": [...]}
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from training import common as C

HF_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja")
# what else a --base checkpoint may carry: sharded weights and their index, sentencepiece/BPE vocabularies
HF_PATTERNS = ("model-*.safetensors", "model.safetensors.index.json", "tokenizer.model", "vocab.json", "merges.txt",
               "added_tokens.json", "aligngate_base.json")
MANIFEST = "manifest.json"


def export_version(policy_dir: str | Path, versions_dir: str | Path, version: str, *, parent: str | None = None,
                   gate: dict | None = None, metrics: dict | None = None, data_files=(), config: dict | None = None,
                   value_reward_fn=None, value_source: str = "", audit_rm: str | Path | None = None,
                   stage: str = "", seed: int = 0, value_prompts=None, value_n: int | None = None) -> Path:
    from kernels.value_head import VALUE_HEAD_FILE, has_value_head, save_value_head

    src = Path(policy_dir)
    dst = Path(versions_dir) / version
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    from training.base import is_template_dir

    template = is_template_dir(src)
    for f in HF_FILES:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    for pat in HF_PATTERNS:
        for f in src.glob(pat):
            shutil.copy2(f, dst / f.name)
    if not template and not (dst / "chat_template.jinja").exists():  # older tiny dirs keep it in tokenizer_config
        from training import tokenizer as tk

        tk.save_tokenizer(dst)
    vh_info: dict = {"file": VALUE_HEAD_FILE}
    if has_value_head(src):
        from kernels.value_head import load_value_head

        # read wherever the head is (aligngate's file, or a trainer's layout inside the weights), written in TRL
        # layout to value_head/ and registered in config.json
        save_value_head(load_value_head(src), dst)
        vh_info["source"] = value_source or "trained with the policy (PPO critic)"
    elif value_reward_fn is not None:
        from training.base import load_causal_lm
        from training.chat import codec_for
        from training.value import fit_value_head

        pol = load_causal_lm(dst) if template else C.load_policy(dst)
        head, info = fit_value_head(pol, value_reward_fn, seed=seed, codec=codec_for(dst), prompts=value_prompts,
                                    n=value_n or 512)
        save_value_head(head, dst)
        vh_info.update({"source": value_source or "fitted (ridge) to rewards of the policy's samples", **info})
    else:
        raise ValueError("the policy has no value head and no reward function was given to fit one")
    vh_info["scale"] = "0-1 reward (sigmoid(rm - mu_ref) or oracle score)"
    slots = ensure_value_slots(dst)
    eos = "<|end|>"
    if template:
        from training.base import load_tokenizer

        eos = load_tokenizer(dst).eos_token
    manifest = {
        "version": version, "parent": parent, "stage": stage,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_hash": C.hash_files(data_files) if data_files else None,
        "config_hash": C.hash_obj(config or {}),
        "weights_hash": C.hash_files(sorted(dst.glob("*.safetensors")) + [dst / VALUE_HEAD_FILE]),
        "config": config or {}, "metrics": metrics or {}, "gate": gate or {"verdict": "UNGATED", "reasons": []},
        "value_head": vh_info, "audit_reward_model": str(audit_rm) if audit_rm else None,
        "chat_template": "chat_template.jinja" if (dst / "chat_template.jinja").exists() else "tokenizer_config.json",
        "eos_token": eos, "value_slots": slots,
        "files": sorted(p.name for p in dst.iterdir()) + [MANIFEST],
    }
    C.write_json(dst / MANIFEST, manifest)
    return dst


def policy_stage(policy_dir: str | Path) -> str:
    """The stage that made `policy_dir`, for the manifest: what its aligngate_base.json or metrics.json says
    (sft, rm, dpo, ppo, distill), "base" for a checkpoint no stage wrote (a team's --base), else ""."""
    import json

    from training.base import BASE_INFO, is_template_dir

    d = Path(policy_dir)
    for f in (BASE_INFO, "metrics.json"):
        try:
            stage = json.loads((d / f).read_text()).get("stage")
        except (OSError, ValueError):
            continue
        if stage:
            return str(stage)
    return "base" if is_template_dir(d) else ""


def read_manifest(version_dir: str | Path) -> dict:
    return C.read_json(Path(version_dir) / MANIFEST)


def ensure_value_slots(version_dir: str | Path) -> dict:
    """The vocabulary rows the served in-pass value rides on (serve/vllm_ext/value_slots.py), written explicitly into
    config.json `aligngate.value_slots` so every gateway and vLLM process reads the same ones. The default
    tokenizer has `<|value_a|>`/`<|value_b|>`; a --base checkpoint usually does not: then rows the tokenizer never
    produces — padded embedding rows past the tokenizer first, then reserved/unused special tokens, highest id
    first (the rule serve/vllm_ext/value_slots.py follows) — and an error that says what to do when there are none."""
    import json
    import re

    from serve.vllm_ext.value_slots import read_value_slots

    d = Path(version_dir)
    cfg = json.loads((d / "config.json").read_text())
    try:
        s = read_value_slots(d)
    except ValueError:
        s = None
    if s is not None:
        slots = {"a": s.a, "b": s.b, "c": s.c}
    else:
        tok = json.loads((d / "tokenizer.json").read_text())
        added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
        special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
        used = max([*tok.get("model", {}).get("vocab", {}).values(), *added.values()]) + 1
        vocab = int(cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 0)
        pat = re.compile(r"<\|reserved_special_token_\d+\|>|<unused\d+>|\[control_\d+\]|<\|placeholder\d+\|>")
        reserved = sorted((i for c, i in added.items() if i in special and i < vocab and pat.fullmatch(c)),
                          reverse=True)
        pool = list(range(used, vocab))[:3] + reserved[:3]
        if len(pool) < 2:
            raise ValueError(f"{d}: the in-pass value needs two vocabulary rows the model never emits; this "
                             f"checkpoint has no padded rows (vocab_size {vocab}, tokenizer {used}) and no reserved "
                             "special tokens: resize the embeddings (model.resize_token_embeddings(n + 64)) or set "
                             "config.json aligngate.value_slots {\"a\": id, \"b\": id, \"c\": id}")
        slots = {"a": pool[0], "b": pool[1], "c": pool[2] if len(pool) > 2 else None}
    cfg = json.loads((d / "config.json").read_text())
    cfg.setdefault("aligngate", {})["value_slots"] = slots
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return slots
