"""A pretrained base: any `AutoModelForCausalLM` checkpoint directory with its tokenizer and chat template.

`--base DIR` on a stage loads the policy (or, for the reward model, `AutoModelForSequenceClassification` on the
same trunk) from DIR. `--lora r,alpha[,target,...]` trains a peft LoRA adapter instead of every weight (targets
default to "all-linear", peft's shorthand for every linear layer but the output head); saving merges the adapter
into the weights (`merge_and_unload`), so a stage's output is again a plain HF checkpoint — the next stage's base,
and a directory vLLM loads.

Each output directory also gets `aligngate_base.json`: where it came from, the LoRA spec, the stage.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BASE_INFO = "aligngate_base.json"
# tokenizer and generation files a checkpoint may carry (copied along when a stage saves a policy)
AUX_FILES = ("generation_config.json", "chat_template.jinja", "tokenizer.model")


class BaseError(ValueError):
    """A --base directory that cannot be trained from: what is missing and how to fix it."""


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    targets: tuple[str, ...] = ("all-linear",)
    dropout: float = 0.0

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig

        t = self.targets
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, task_type=task_type,
                          target_modules="all-linear" if t == ("all-linear",) else list(t), bias="none")


def parse_lora(spec: str | None) -> LoraSpec | None:
    """"r,alpha[,target,...]" e.g. "8,16" or "16,32,q_proj,v_proj" -> LoraSpec (None for None/"")."""
    if not spec:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        r, alpha = int(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise BaseError(f"--lora {spec!r}: expected r,alpha[,target,...] such as 8,16 or 16,32,q_proj,v_proj") from None
    if r <= 0 or alpha <= 0:
        raise BaseError(f"--lora {spec!r}: r and alpha must be positive")
    return LoraSpec(r, alpha, tuple(parts[2:]) or ("all-linear",))


def check_base(path: str | Path) -> Path:
    """The directory must hold a transformers config, weights and a tokenizer with a chat template."""
    d = Path(path)
    if not (d / "config.json").is_file():
        raise BaseError(f"--base {d}: no config.json (expected a Hugging Face model directory)")
    if not any(d.glob("*.safetensors")) and not any(d.glob("*.bin")):
        raise BaseError(f"--base {d}: no weights (*.safetensors or *.bin)")
    if not any((d / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise BaseError(f"--base {d}: no tokenizer files")
    return d


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    d = check_base(path)
    tok = AutoTokenizer.from_pretrained(str(d))
    if not tok.chat_template:
        raise BaseError(f"--base {d}: the tokenizer has no chat template (add chat_template.jinja or "
                        "tokenizer_config.json 'chat_template'); an instruct checkpoint has one")
    if tok.pad_token is None:  # trl and batching need one; the EOS is the usual stand-in (masked by attention)
        tok.pad_token = tok.eos_token
    return tok


def _quiet():
    import transformers

    class Q:
        def __enter__(self):
            self.lvl = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()

        def __exit__(self, *a):
            transformers.logging.set_verbosity(self.lvl)

    return Q()


def load_causal_lm(path: str | Path):
    from transformers import AutoModelForCausalLM

    d = check_base(path)
    with _quiet():
        m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    m.eval()
    return m


def load_seq_cls(path: str | Path, pad_token_id: int | None):
    """AutoModelForSequenceClassification (num_labels 1) on the base's trunk; the score head is new."""
    from transformers import AutoModelForSequenceClassification

    d = check_base(path)
    with _quiet():  # "score.weight newly initialized" is expected
        m = AutoModelForSequenceClassification.from_pretrained(str(d), num_labels=1, dtype=torch.float32)
    if pad_token_id is not None:
        m.config.pad_token_id = pad_token_id
    return m


def with_lora(model, lora: LoraSpec | None, task_type: str = "CAUSAL_LM"):
    if lora is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora.peft_config(task_type))


def merged(model):
    """A plain transformers model: LoRA adapters merged into the weights (no-op for a full fine-tune)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def trainable_params(model) -> dict:
    n = sum(p.numel() for p in model.parameters())
    t = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": n, "trainable": t, "trainable_frac": t / max(n, 1)}


@dataclass
class BaseInfo:
    base: str
    stage: str
    lora: dict | None = None
    parent: str | None = None
    extra: dict = field(default_factory=dict)


def save_policy(model, tok, out_dir: str | Path, base_dir: str | Path, info: BaseInfo) -> Path:
    """Merge any adapter and save a complete HF checkpoint (weights, tokenizer, chat template, generation config)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = merged(model)
    m.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for f in AUX_FILES:  # generation_config (stop tokens) and a separate template file, when the base had them
        if (Path(base_dir) / f).exists() and not (out / f).exists():
            shutil.copy2(Path(base_dir) / f, out / f)
    (out / BASE_INFO).write_text(json.dumps(asdict(info), indent=2, default=str))
    return out


def is_template_dir(path: str | Path) -> bool:
    """True for a checkpoint that is not one of aligngate's default tiny policies: a --base checkpoint or anything
    trained from one. Those are read through their own tokenizer and chat template (training/chat.py); the tiny
    ones (recognised by their byte-level chat template) keep the byte-level code path they were tuned on."""
    from training import tokenizer as tk

    d = Path(path)
    if (d / BASE_INFO).exists():
        return True
    tpl = None
    if (d / "chat_template.jinja").exists():
        tpl = (d / "chat_template.jinja").read_text()
    elif (d / "tokenizer_config.json").exists():
        tpl = json.loads((d / "tokenizer_config.json").read_text()).get("chat_template")
    return tpl != tk.CHAT_TEMPLATE
