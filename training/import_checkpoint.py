"""Import a team's RLHF checkpoint into aligngate's version layout (`aligngate versions import SRC --out DIR`).

Layouts recognised (by the tensor names in the weight files, not by file names alone):

- `trl`: `AutoModelForCausalLMWithValueHead.save_pretrained` (TRL's PPO value-head wrapper; trl 1.16 no longer ships
  it, its checkpoints are still about): the causal LM's own weights with `v_head.summary.weight` [1, H] and
  `v_head.summary.bias` [1] among them, in `model.safetensors`, `pytorch_model.bin`, or shards with an index.
  The head is a linear over the policy's own post-norm hidden states, so it is served in the same forward pass.
- `openrlhf`: a causal LM with a bias-free `value_head.weight` (or `score.weight`) over its own trunk inside its
  weights: the policy's own value head, served in the pass like TRL's.
- `openrlhf_critic`: OpenRLHF's critic (or reward model) directory: its own trunk under `model.` (no `lm_head`) and a
  bias-free linear `value_head.weight` or `score.weight` (the name in config.json `value_head_prefix` wins) over
  ITS OWN hidden states; `normalize_reward` with `mean`/`std` in config.json is folded into the head. It needs
  `--policy`, the actor it belongs to. When the critic's trunk is tensor-for-tensor the policy's (a shared-trunk
  critic), its head is the policy's value head, served in the pass. When it is not (the usual case: OpenRLHF
  trains the critic as a separate model), the policy's forward pass never computes the hidden states the head
  reads, so no in-pass value is possible: the version is written without a value head, the critic as an audit
  reward model in `DIR/audit_model` (`serve.rewards.audit`, scored off the request path), and the manifest and the
  command's output say so. Served with `audit_model_dir: DIR/audit_model`, that version's answers then carry
  `aligngate.reward.source == "audit_model"`.
- `plain`: a causal LM with no value head: a version without one (its reward comes from the audit model, or is null).
- `aligngate`: already a version (`value_head/value_head.safetensors`): refused, register it as it is.

The version directory: the HF files (weights in safetensors, value-head tensors removed so a plain `vllm serve`
loads it), `value_head/value_head.safetensors` in TRL keys (`kernels.value_head`), and `manifest.json` saying
where it came from, the layout found, and `gate.verdict == "IMPORTED"`: no aligngate training gate was run.
Written into a temporary sibling directory and renamed into place: a reader never sees half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kernels.layout import OPENRLHF_WEIGHT, TRL_BIAS, TRL_WEIGHT, VALUE_HEAD_FILE
from training import checkpoint_files as cf

MANIFEST = "manifest.json"  # as training.export
AUDIT_DIR = "audit_model"
TRL_PREFIX = "v_head."
WRAPPER_PREFIX = "pretrained_model."  # a TRL wrapper's own state_dict, saved by a trainer instead of save_pretrained
IMPORTED = {"verdict": "IMPORTED", "reasons": ["imported from outside aligngate: no aligngate training gate was run; "
                                              "the canary rollout's live gates still apply"]}


class ImportRefused(ValueError):
    """The source cannot become a version as asked; the message says what to do instead."""


@dataclass
class ImportResult:
    out: Path
    layout: str
    value_head: bool
    audit_model: Path | None = None
    notes: list[str] = field(default_factory=list)


# --- what is it -------------------------------------------------------------------------------------------------
def _config(d: Path) -> dict:
    p = d / "config.json"
    if not p.is_file():
        raise ImportRefused(f"{d} is not a Hugging Face model directory (no config.json)")
    return json.loads(p.read_text())


def critic_head_name(d: Path, names: set[str]) -> str | None:
    """The name of an OpenRLHF-style head tensor (`value_head.weight`, `score.weight`, or config.json's
    `value_head_prefix`), or None. `score.weight` of a *ForSequenceClassification model is a classifier, not this."""
    cfg = _config(d)
    candidates = [f"{cfg['value_head_prefix']}.weight"] if cfg.get("value_head_prefix") else []
    candidates.append("value_head.weight")
    if not any("Classification" in a for a in cfg.get("architectures") or []):
        candidates.append("score.weight")
    return next((c for c in candidates if c in names), None)


def is_causal_lm(d: Path, names: set[str]) -> bool:
    """A policy (an LM head of its own, or tied to the embeddings) under a *ForCausalLM architecture - as opposed to
    OpenRLHF's critic, a trunk with only the value head (saved as `CriticModel`, or without `lm_head`)."""
    cfg = _config(d)
    archs = cfg.get("architectures") or []
    lm = any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs)
    tied = bool(cfg.get("tie_word_embeddings") if "tie_word_embeddings" in cfg
                else (cfg.get("text_config") or {}).get("tie_word_embeddings"))
    return lm and ("lm_head.weight" in names or tied)


def detect_layout(src: str | Path, critic: bool = False) -> str:
    """aligngate | trl | openrlhf (a causal LM carrying a bias-free head over its own trunk in its weights) |
    openrlhf_critic (a critic: its own trunk, needs the policy; `critic=True` when a --policy was given) | plain."""
    d = Path(src)
    _config(d)
    if (d / VALUE_HEAD_FILE).is_file():
        return "aligngate"
    names = cf.keys(d)
    if any(n.startswith((TRL_PREFIX, WRAPPER_PREFIX + TRL_PREFIX)) for n in names):
        return "trl"
    if critic_head_name(d, names) is not None:
        return "openrlhf_critic" if critic or not is_causal_lm(d, names) else "openrlhf"
    return "plain"


# --- the policy's files -----------------------------------------------------------------------------------------
def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """config, generation config, tokenizer, chat template...: every top-level file but weights and trainer state."""
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not cf.is_weight_or_state(p.name) and p.name != MANIFEST:
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def _copy_weights(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    """The model's weights into `dst` as safetensors (shards and index kept), value-head tensors (TRL's `v_head.*`,
    an in-weights `value_head.weight` / `score.weight`) taken out and returned: vLLM's own causal-LM class would
    refuse them. A wrapper's `pretrained_model.` prefix is dropped."""
    heads = {n for n in ("value_head.weight", "score.weight") if n == critic_head_name(src, {n})}
    prefix = _config(src).get("value_head_prefix")
    if prefix:
        heads.add(f"{prefix}.weight")
    wf = cf.find_weights(src)
    head: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    for name, tensors in cf.iter_files(src, wf):
        kept = {}
        for k, t in tensors.items():
            k = k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k
            if k.startswith(TRL_PREFIX) or k in heads:
                head[k] = t
            else:
                kept[k] = t
        out_name = cf.safetensors_name(name) if wf.index else cf.SAFE
        if kept:
            cf.save_safetensors(kept, dst / out_name)
            weight_map.update({k: out_name for k in kept})
        del tensors, kept
    if not weight_map:
        raise ImportRefused(f"{src}: the weights hold only a value head ({sorted(head)}) - TRL saves a PEFT model's "
                            "v_head alone beside its adapter: merge the adapter into the base model "
                            "(peft `merge_and_unload`), save it, and import that with the head")
    if wf.index:
        size = sum((dst / f).stat().st_size for f in set(weight_map.values()))
        (dst / cf.SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": size},
                                                     "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return head


def _hidden_size(cfg: dict) -> int | None:
    h = cfg.get("hidden_size") or (cfg.get("text_config") or {}).get("hidden_size")
    return int(h) if h else None


def _save_head(dst: Path, weight: torch.Tensor, bias: torch.Tensor | None, layout: str) -> None:
    from kernels.value_head import ValueHead, save_value_head

    w = weight.detach().float().reshape(-1)
    h = _hidden_size(_config(dst))
    if h is not None and w.numel() != h:
        raise ImportRefused(f"the value head has {w.numel()} inputs but the model's hidden_size is {h}")
    head = ValueHead(w.numel())
    with torch.no_grad():
        head.summary.weight.copy_(w.reshape(1, -1))
        head.summary.bias.copy_(bias.detach().float().reshape(1) if bias is not None else torch.zeros(1))
    save_value_head(head, dst)
    cfg = _config(dst)
    cfg["aligngate"]["value_head"]["imported_layout"] = layout
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


# --- OpenRLHF critic --------------------------------------------------------------------------------------------
class _Tensors:
    """Random access to a checkpoint's tensors (safetensors lazily, .bin files loaded once)."""

    def __init__(self, d: Path):
        self.d, self.wf = d, cf.find_weights(d)
        self.where = ({k: v for k, v in json.loads((d / self.wf.index).read_text())["weight_map"].items()}
                      if self.wf.index else None)
        self._bin: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, key: str) -> torch.Tensor | None:
        f = self.where.get(key) if self.where is not None else self.wf.files[0]
        if f is None:
            return None
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(self.d / f), "pt") as fh:
                return fh.get_tensor(key) if key in fh.keys() else None
        if f not in self._bin:
            self._bin[f] = cf.load_file(self.d / f)
        return self._bin[f].get(key)


@dataclass
class TrunkComparison:
    same: bool
    compared: int
    differing: int
    max_abs_diff: float
    why: str


def compare_trunks(critic: Path, policy: Path, head_key: str) -> TrunkComparison:
    """Is the critic's trunk the policy's own, tensor for tensor? (In a lower-precision dtype when they differ:
    a bf16 policy of an fp32-saved shared trunk still matches.)"""
    pol = _Tensors(policy)
    critic_keys = cf.keys(critic) - {head_key, "mean", "std"}
    policy_keys = {k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k for k in cf.keys(policy)}
    policy_trunk = {k for k in policy_keys
                    if not k.startswith((TRL_PREFIX, "lm_head.")) and k not in ("value_head.weight", "score.weight")}
    if critic_keys != policy_trunk:
        extra, missing = sorted(critic_keys - policy_trunk)[:3], sorted(policy_trunk - critic_keys)[:3]
        return TrunkComparison(False, 0, 0, float("nan"), f"tensor names differ (critic only: {extra}, policy only: "
                                                          f"{missing})")
    compared = differing = 0
    worst = 0.0
    for _, tensors in cf.iter_files(critic):
        for k, c in tensors.items():
            if k not in critic_keys:
                continue
            p = pol.get(k)
            if p is None:
                p = pol.get(WRAPPER_PREFIX + k)
            compared += 1
            if p is None or p.shape != c.shape:
                differing += 1
                worst = float("inf")
                continue
            dtype = p.dtype if torch.finfo(p.dtype).bits <= torch.finfo(c.dtype).bits else c.dtype
            a, b = c.to(dtype), p.to(dtype)
            if not torch.equal(a, b):
                differing += 1
                worst = max(worst, float((a.float() - b.float()).abs().max()))
    why = "the same trunk" if not differing else f"{differing} of {compared} trunk tensors differ (max |diff| {worst:.3g})"
    return TrunkComparison(differing == 0, compared, differing, worst, why)


def critic_head(critic: Path, head_key: str) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(weight [H], bias or None, info): OpenRLHF's eval-time normalisation `(v - mean) / std` folded in."""
    t = _Tensors(critic)
    w = t.get(head_key)
    if w is None or w.numel() != w.shape[-1]:
        raise ImportRefused(f"{critic}: `{head_key}` is not a [1, hidden] value head")
    w = w.float().reshape(-1)
    cfg = _config(critic)
    mean, std = cfg.get("mean"), cfg.get("std")
    sd_mean, sd_std = t.get("mean"), t.get("std")
    mean = float(sd_mean) if sd_mean is not None else mean
    std = float(sd_std) if sd_std is not None else std
    info = {"head_tensor": head_key, "normalize_reward": bool(cfg.get("normalize_reward"))}
    if cfg.get("normalize_reward") and mean is not None and std:
        info.update(mean=mean, std=std)
        return w / std, torch.tensor([-mean / std]), info
    return w, None, info


def _write_audit_model(critic: Path, policy: Path, dst: Path, head_key: str, name: str) -> dict:
    """The critic as a sequence-classification reward model (`serve.rewards.audit`'s torch backend: trunk `model.*`,
    `score.weight`, score read at the last real token), with its tokenizer and `rm_config.json`."""
    hf = dst / "hf"
    hf.mkdir(parents=True)
    cfg = _config(critic)
    arch = ((cfg.get("architectures") or _config(policy).get("architectures") or ["LlamaForCausalLM"])[0])
    if not arch.endswith("ForCausalLM"):
        arch = (_config(policy).get("architectures") or ["LlamaForCausalLM"])[0]
    cfg.update(architectures=[arch.replace("ForCausalLM", "ForSequenceClassification")], num_labels=1)
    for k in ("value_head_prefix", "normalize_reward", "mean", "std", "auto_map"):
        cfg.pop(k, None)
    w, b, info = critic_head(critic, head_key)
    tensors = {k: v for _, ts in cf.iter_files(critic) for k, v in ts.items() if k not in (head_key, "mean", "std")}
    tensors["score.weight"] = w.reshape(1, -1).to(next(iter(tensors.values())).dtype)
    cf.save_safetensors(tensors, hf / cf.SAFE)
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    tok_src = critic if (critic / "tokenizer_config.json").is_file() else policy
    for p in tok_src.iterdir():
        if p.is_file() and (p.name.startswith(("tokenizer", "special_tokens", "added_tokens", "vocab", "merges"))
                            or p.name == "chat_template.jinja"):
            shutil.copy2(p, hf / p.name)
    # bias (the folded mean) becomes the reward scale's centre: reward01 = sigmoid(score - mu_ref)
    rm = {"mu_ref": float(-b) if b is not None else 0.0, "version": name, "encoding": "chat_template",
          "imported_from": str(critic.resolve()), "layout": "openrlhf_critic", **info}
    (dst / "rm_config.json").write_text(json.dumps(rm, indent=2))
    return rm


# --- the whole import -------------------------------------------------------------------------------------------
def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _slots_note(d: Path) -> str | None:
    from serve.vllm_ext.value_slots import read_value_slots

    try:
        read_value_slots(d)
    except ValueError as e:  # the message names the temporary directory: keep only what it says
        return (f"no reserved value slots can be found for this tokenizer ({str(e).split(': ', 1)[-1]}); the "
                "value head cannot be read out until config.json has aligngate.value_slots")
    return None


def import_checkpoint(src: str | Path, out: str | Path, *, policy: str | Path | None = None, name: str | None = None,
                      force: bool = False) -> ImportResult:
    """`src` (a TRL value-head checkpoint, an OpenRLHF critic with `policy`, or a plain causal LM) -> version `out`."""
    src, out = Path(src).resolve(), Path(out).resolve()
    layout = detect_layout(src, critic=policy is not None)
    if (src / "adapter_config.json").is_file():
        raise ImportRefused(f"{src} is a PEFT adapter: merge it into its base model first (peft `merge_and_unload`, "
                            "then save_pretrained) and import the merged directory")
    if layout == "aligngate":
        raise ImportRefused(f"{src} is already an aligngate version (it has {VALUE_HEAD_FILE}): register it as it is")
    if layout == "openrlhf_critic" and policy is None:
        raise ImportRefused(f"{src} is an OpenRLHF critic: a value model over its own trunk, not a policy. Give the "
                            "actor it was trained with: --policy DIR")
    if policy is not None and layout != "openrlhf_critic":
        raise ImportRefused(f"--policy is for an OpenRLHF critic; {src} is a {layout} checkpoint with no "
                            "value_head.weight / score.weight")
    if out.exists() and not force:
        raise ImportRefused(f"{out} exists; choose another --out or pass --force to replace it")
    name = name or out.name
    policy_dir = Path(policy).resolve() if policy is not None else src
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir(parents=True)
    try:
        result = _build(src, policy_dir, tmp, layout, name)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    if result.audit_model is not None:
        result.audit_model = out / AUDIT_DIR
    return result


def _drop_head_config(d: Path) -> None:
    """A policy directory's config.json may name a value head of its own (an aligngate version given as --policy):
    the version's head is only what this import writes."""
    cfg = _config(d)
    if (cfg.get("aligngate") or {}).pop("value_head", None) is not None:
        (d / "config.json").write_text(json.dumps(cfg, indent=2))


def _build(src: Path, policy_dir: Path, tmp: Path, layout: str, name: str) -> ImportResult:
    _copy_side_files(policy_dir, tmp)
    _drop_head_config(tmp)
    trl_head = _copy_weights(policy_dir, tmp)
    res = ImportResult(tmp, layout, False)
    vh: dict | None = None
    audit: dict | None = None
    if layout == "trl":
        w = trl_head.get(TRL_WEIGHT)
        if w is None:
            raise ImportRefused(f"{src}: `v_head.*` tensors without `{TRL_WEIGHT}` ({sorted(trl_head)})")
        _save_head(tmp, w, trl_head.get(TRL_BIAS), "trl")
        vh = {"file": VALUE_HEAD_FILE, "layout": "trl", "source": f"TRL v_head.summary.* in {src}",
              "bias": TRL_BIAS in trl_head}
    elif layout == "openrlhf":  # the head is over this very model's trunk: the policy's own value head
        head_key = critic_head_name(src, set(trl_head))
        w, b, info = critic_head(src, head_key)
        _save_head(tmp, w, b, "openrlhf")
        vh = {"file": VALUE_HEAD_FILE, "layout": "openrlhf", "source": f"{head_key} in the weights of {src}", **info}
    elif layout == "openrlhf_critic":
        head_key = critic_head_name(src, cf.keys(src))
        cmp = compare_trunks(src, policy_dir, head_key)
        if cmp.same:
            w, b, info = critic_head(src, head_key)
            _save_head(tmp, w, b, "openrlhf_critic")
            vh = {"file": VALUE_HEAD_FILE, "layout": "openrlhf_critic", "source": f"{head_key} of the critic {src}, "
                  f"whose trunk is the policy's own ({cmp.compared} tensors equal)", **info}
        else:
            audit = _write_audit_model(src, policy_dir, tmp / AUDIT_DIR, head_key, f"{name}-critic")
            res.audit_model = tmp / AUDIT_DIR
            res.notes.append(
                f"the critic's trunk is not the policy's ({cmp.why}): its value head reads the critic's own hidden "
                "states, which the policy's forward pass never computes, so this version has NO in-pass value head. "
                f"The critic was written as an audit reward model in {AUDIT_DIR}/: serve it with "
                f"`audit_model_dir: <version>/{AUDIT_DIR}` (env ALIGNGATE_AUDIT_MODEL_DIR) and this version's answers "
                "carry aligngate.reward with source \"audit_model\" (scored after the answer, off the token path).")
    else:
        res.notes.append("no value head in the checkpoint: answers carry aligngate.reward from the audit model "
                         "(`audit_model_dir`) when one is configured, else null")
    res.value_head = vh is not None
    if vh is not None and (note := _slots_note(tmp)):
        res.notes.append(note)
    weights = [p for p in tmp.iterdir() if p.suffix == ".safetensors"]
    manifest = {
        "version": name, "parent": None, "stage": "imported",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "imported_from": {"path": str(src), "layout": layout, "policy": str(policy_dir) if policy_dir != src else None,
                          "files": sorted(p.name for p in src.iterdir() if p.is_file())},
        "gate": IMPORTED, "metrics": {},
        "weights_hash": _hash_files(weights + ([tmp / VALUE_HEAD_FILE] if vh else [])),
        "value_head": vh, "audit_reward_model": AUDIT_DIR if audit else None, "audit_model_config": audit,
        "chat_template": "chat_template.jinja" if (tmp / "chat_template.jinja").is_file() else None,
        "notes": res.notes, "files": sorted([p.name for p in tmp.iterdir()] + [MANIFEST]),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return res


def _commit(tmp: Path, out: Path) -> None:
    """Rename into place; an existing `out` (with force) is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def importable(model_dir: str | Path) -> str | None:
    """For `versions register`: the layout of a directory that must be imported before it can be served
    (`trl`, `openrlhf_critic`), or None when it can be served as it is (an aligngate version, a plain causal LM)."""
    try:
        layout = detect_layout(model_dir)
    except (ImportRefused, FileNotFoundError):
        return None
    return layout if layout in ("trl", "openrlhf", "openrlhf_critic") else None


def import_for_serving(model_dir: str | Path, cache_dir: str | Path) -> tuple[Path, str | None]:
    """`versions register --model` / a configured version given a TRL checkpoint: (the directory to serve, the
    layout imported or None). A TRL directory is imported once into `<cache_dir>/imported/<name>-<key>`, the key
    a hash of the source's path, file names, sizes and times (a changed checkpoint is imported afresh). An
    OpenRLHF critic is refused (it needs its policy: `aligngate versions import --policy`); anything else is
    served as it is."""
    src = Path(model_dir).resolve()
    try:
        layout = detect_layout(src)
    except FileNotFoundError:  # weights named otherwise (vLLM globs *.safetensors, Mistral's consolidated.*): vLLM's call
        return src, None
    if layout not in ("trl", "openrlhf", "openrlhf_critic"):
        return src, None
    if layout == "openrlhf_critic":
        raise ImportRefused(f"{src} is an OpenRLHF critic, not a policy: import it with its actor first, "
                            f"`aligngate versions import {src} --policy ACTOR_DIR --out VERSION_DIR`, and register "
                            "VERSION_DIR")
    h = hashlib.sha256(str(src).encode())
    for p in sorted(src.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = Path(cache_dir) / "imported" / f"{src.name}-{h.hexdigest()[:12]}"
    if (out / MANIFEST).is_file():
        return out, layout
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import_checkpoint(src, out)
    except (ImportRefused, OSError):
        if (out / MANIFEST).is_file():  # another replica (or request) imported it meanwhile
            return out, layout
        raise
    return out, layout
