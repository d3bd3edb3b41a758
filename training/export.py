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
MANIFEST = "manifest.json"


def export_version(policy_dir: str | Path, versions_dir: str | Path, version: str, *, parent: str | None = None,
                   gate: dict | None = None, metrics: dict | None = None, data_files=(), config: dict | None = None,
                   value_reward_fn=None, value_source: str = "", audit_rm: str | Path | None = None,
                   stage: str = "", seed: int = 0) -> Path:
    from kernels.value_head import VALUE_HEAD_FILE, has_value_head, save_value_head

    src = Path(policy_dir)
    dst = Path(versions_dir) / version
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in HF_FILES:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    if not (dst / "chat_template.jinja").exists():  # older tokenizer dirs keep it inside tokenizer_config.json
        from training import tokenizer as tk

        tk.save_tokenizer(dst)
    vh_info: dict = {"file": VALUE_HEAD_FILE}
    if has_value_head(src):  # any layout (kernels.layout.find_value_head), written in aligngate's
        from kernels.value_head import load_value_head

        save_value_head(load_value_head(src), dst)  # (re)register in config.json
        vh_info["source"] = value_source or "trained with the policy (PPO critic)"
    elif value_reward_fn is not None:
        from training.value import fit_value_head

        head, info = fit_value_head(C.load_policy(dst), value_reward_fn, seed=seed)
        save_value_head(head, dst)
        vh_info.update({"source": value_source or "fitted (ridge) to rewards of the policy's samples", **info})
    else:
        raise ValueError("the policy has no value head and no reward function was given to fit one")
    vh_info["scale"] = "0-1 reward (sigmoid(rm - mu_ref) or oracle score)"
    manifest = {
        "version": version, "parent": parent, "stage": stage,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_hash": C.hash_files(data_files) if data_files else None,
        "config_hash": C.hash_obj(config or {}),
        "weights_hash": C.hash_files([dst / "model.safetensors", dst / VALUE_HEAD_FILE]),
        "config": config or {}, "metrics": metrics or {}, "gate": gate or {"verdict": "UNGATED", "reasons": []},
        "value_head": vh_info, "audit_reward_model": str(audit_rm) if audit_rm else None,
        "chat_template": "chat_template.jinja", "eos_token": "<|end|>",
        "files": sorted(p.name for p in dst.iterdir()) + [MANIFEST],
    }
    C.write_json(dst / MANIFEST, manifest)
    return dst


def read_manifest(version_dir: str | Path) -> dict:
    return C.read_json(Path(version_dir) / MANIFEST)
