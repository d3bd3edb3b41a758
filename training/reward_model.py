"""Reward model: a tiny Llama with a scalar head, trained with the Bradley–Terry loss, exported to ONNX.

    loss = -log σ(r(x, y_w) - r(x, y_l))          (+ `center` · (r_w + r_l)², trl's reward-centering term)

The score is read at the last token of prompt+response — the end-of-turn token (OpenRLHF reads it at EOS too).
The backbone starts from the SFT policy (InstructGPT practice). Accuracy is measured on held-out pairs against
the ORACLE, not only against the labels.

Two options make the RM better at telling a correct answer from a near miss ("add 0 6": "6" vs "7"), which is
where a 2-layer RM fine-tuned from the policy fails (it learns pleasantries and letter case, not correctness):
- `extra_layers`: depth up-scaling. The policy's layers are kept and new layers are stacked on top, initialised as
  the identity (zero output projections), so training starts from the policy's features. Why: the policy knows
  the answer only at its top layer (as a next-token prediction); comparing it with the response and carrying
  the verdict to the end-of-turn position needs layers after that.
- `lm_coef`: an auxiliary next-token loss on the chosen responses, through a copy of the policy's LM head that
  is trained along and dropped at save. Why: the Bradley–Terry gradient alone wears away the answer-predicting
  features the policy brought; the auxiliary loss keeps them (the "chosen" side comes from aggregated rater
  labels — no oracle).
The saved model stays a plain `LlamaForSequenceClassification` (more layers), so the ONNX/torch contract that
serve/rewards/audit.py reads is unchanged.

On the 0–1 scale the gateway's alarms use, reward01 = σ(r − μ_ref), μ_ref = the mean raw score of the reference
(SFT) policy's samples: under Bradley–Terry that is the probability the response is preferred over a response
of average reference quality. μ_ref is stored in `rm_config.json`.

Out dir: `hf/` (LlamaForSequenceClassification + tokenizer), `reward_model.onnx` (inputs `input_ids`,
`attention_mask` [batch, length], right-padded; output `scores` [batch]), `rm_config.json`, `metrics.json`,
`curves.png`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import common as C
from training import tiny
from training import formats as FM
from training import tokenizer as tk

ONNX_FILE = "reward_model.onnx"
RM_CONFIG = "rm_config.json"


@dataclass
class RMConfig:
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.01
    center: float = 0.01
    seed: int = 0
    size: str = "tiny"  # used only without an init policy
    init_from: str | None = None  # SFT policy dir (recommended)
    extra_layers: int = 0  # identity-initialised layers stacked on the init policy's (needs init_from)
    lm_coef: float = 0.0  # auxiliary next-token loss on chosen responses (needs init_from)
    onnx: bool = True


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    loss = -F.logsigmoid(r_chosen - r_rejected).mean()
    if center:
        loss = loss + center * ((r_chosen + r_rejected) ** 2).mean()
    return loss


class ScoreWrapper(torch.nn.Module):
    """(input_ids, attention_mask) right-padded -> score at the last real token. Same code for torch and ONNX.

    "Last real token" is the last position that is attended and is not the pad id — the rule transformers'
    *ForSequenceClassification (and so trl's RewardTrainer) pools with, which matters when a base's pad token
    is its EOS stand-in: the score is then read just before a trailing EOS, in training and here alike."""

    def __init__(self, model, pad_id: int | None = None):
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask if self.pad_id is None else attention_mask * (input_ids != self.pad_id).long()
        return read_last_real(self.model.score(h).squeeze(-1), mask)  # [B, T] -> [B]


def _quiet_from_pretrained(cls, path: str):
    import transformers

    lvl = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "score.weight newly initialized" is expected
    try:
        return cls.from_pretrained(path, num_labels=1, dtype=torch.float32) if cls.__name__.endswith(
            "SequenceClassification") else cls.from_pretrained(path, dtype=torch.float32)
    finally:
        transformers.logging.set_verbosity(lvl)


def stack_layers(base, extra: int):
    """`base` (LlamaForSequenceClassification) with `extra` more decoder layers on top, each initialised as the
    identity: the residual branches' output projections (o_proj, down_proj) are zero, so the new model computes
    exactly what `base` did until training moves them."""
    import copy

    from transformers import LlamaForSequenceClassification

    c = copy.deepcopy(base.config)
    n0 = c.num_hidden_layers
    c.num_hidden_layers = n0 + extra
    if getattr(c, "layer_types", None) is not None:  # per-layer attention types, where the config has them
        c.layer_types = list(c.layer_types) + [c.layer_types[-1]] * extra
    m = LlamaForSequenceClassification(c)
    m.load_state_dict(base.state_dict(), strict=False)  # the new layers' keys are the only missing ones
    with torch.no_grad():
        for layer in m.model.layers[n0:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return m


def new_reward_model(cfg: RMConfig):
    from transformers import LlamaForSequenceClassification

    if cfg.init_from:
        m = _quiet_from_pretrained(LlamaForSequenceClassification, cfg.init_from)
        if cfg.extra_layers:
            m = stack_layers(m, cfg.extra_layers)
    else:
        c = tiny.llama_config(cfg.size)
        c.num_labels = 1
        m = LlamaForSequenceClassification(c)
    m.config.pad_token_id = C.PAD
    with torch.no_grad():
        m.score.weight.normal_(0.0, 0.02)
    return m


class RewardModel:
    """A trained RM in torch (or ONNX Runtime with `backend="onnx"`): raw scores and the 0–1 reward."""

    def __init__(self, path: str | Path, backend: str = "torch"):
        self.path = Path(path)
        cfg_path = self.path / RM_CONFIG
        self.cfg = C.read_json(cfg_path) if cfg_path.exists() else {}
        self.mu_ref = float(self.cfg.get("mu_ref", 0.0))
        self.backend = backend
        if backend == "onnx":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            self.sess = ort.InferenceSession(str(self.path / ONNX_FILE), so, providers=["CPUExecutionProvider"])
        else:
            from transformers import AutoModelForSequenceClassification

            m = AutoModelForSequenceClassification.from_pretrained(str(self.path / "hf"), dtype=torch.float32)
            pad = self.cfg.get("pad_id")
            self.wrapper = ScoreWrapper(m, pad_id=pad).eval()
        # a --base RM reads chats through its own tokenizer and chat template; the default one is byte-level
        self.codec = None
        if self.cfg.get("encoding") == "chat_template":
            from training.chat import TemplateCodec

            self.codec = TemplateCodec.from_dir(self.path / "hf")

    def batch(self, prompts, responses):
        if self.codec is None:
            from training.formats import prompt_text

            ids, att, _ = C.collate_prompt_response([prompt_text(p) for p in prompts], list(responses))
            return ids, att
        from training.chat import pad_right

        return pad_right([self.codec.sequence_ids(p, r) for p, r in zip(prompts, responses)], self.codec.pad_id)

    @torch.no_grad()
    def score(self, prompts, responses, batch_size: int = 256) -> np.ndarray:
        out = []
        if self.codec is not None:
            batch_size = min(batch_size, 32)
        for s in range(0, len(prompts), batch_size):
            ids, att = self.batch(prompts[s:s + batch_size], responses[s:s + batch_size])
            if self.backend == "onnx":
                r = self.sess.run(["scores"], {"input_ids": ids.numpy(), "attention_mask": att.numpy()})[0]
            else:
                r = self.wrapper(ids, att).numpy()
            out.append(r)
        return np.concatenate(out) if out else np.zeros(0)

    def reward01(self, prompts, responses) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.score(prompts, responses) - self.mu_ref)))


def export_onnx(wrapper: ScoreWrapper, path: str | Path, opset: int = 17, example=None) -> Path:
    """Legacy TorchScript exporter (dynamo=False), opset 17, dynamic batch and length. `example`: (ids, att) to
    trace with (default: two byte-encoded chats)."""
    import warnings

    ids, att = example if example is not None else C.collate_prompt_response(["add 1 2", "reverse abcd"], ["3", "dcba"])[:2]
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper.eval(), (ids, att), str(path), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["scores"],
            dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                          "scores": {0: "batch"}},
        )
    return path


def check_onnx(rm_dir: str | Path, prompts, responses) -> dict:
    """Max |onnxruntime − torch| over the given sequences."""
    t = RewardModel(rm_dir, "torch").score(prompts, responses)
    o = RewardModel(rm_dir, "onnx").score(prompts, responses)
    return {"max_abs_diff": float(np.max(np.abs(t - o))), "n": len(prompts)}


def accuracy_vs_oracle(scores_a: np.ndarray, scores_b: np.ndarray, oracle_a, oracle_b) -> dict:
    oa, ob = np.asarray(oracle_a), np.asarray(oracle_b)
    keep = oa != ob
    pred = scores_a[keep] > scores_b[keep]
    truth = oa[keep] > ob[keep]
    return {"accuracy": float((pred == truth).mean()) if keep.any() else None, "n": int(keep.sum())}


def train(prefs: list[dict], cfg: RMConfig, desc: str = "rm"):
    """Train on resolved pairs [{"prompt", "chosen", "rejected"}]. Returns (wrapper, history)."""
    model = new_reward_model(cfg)
    wrapper = ScoreWrapper(model)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    lm_head = aux_lm_head(cfg)
    params = list(model.parameters()) + (list(lm_head.parameters()) if lm_head is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    allowed = C.allowed_token_mask(model.config.vocab_size)
    hist: dict[str, list[float]] = {"loss": [], "label_accuracy": [], "margin": []}
    if lm_head is not None:
        hist["lm_loss"] = []
    wrapper.train()
    bar = C.progress(range(cfg.steps), desc=desc)
    for step in bar:
        b = [prefs[i] for i in rng.sample(range(len(prefs)), min(cfg.batch_size, len(prefs)))]
        n = len(b)
        ids, att, resp = C.collate_prompt_response([p["prompt"] for p in b] * 2,
                                                   [p["chosen"] for p in b] + [p["rejected"] for p in b])
        for g in opt.param_groups:
            g["lr"] = C.lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        h = model.model(input_ids=ids, attention_mask=att).last_hidden_state
        r = read_last(model.score(h).squeeze(-1), att)
        rw, rl = r[:n], r[n:]
        loss = bt = bradley_terry_loss(rw, rl, cfg.center)
        if lm_head is not None:
            lm = chosen_lm_loss(lm_head, h[:n], ids[:n], resp[:n], allowed)
            loss = bt + cfg.lm_coef * lm
            hist["lm_loss"].append(lm.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist["loss"].append(bt.item())
        hist["label_accuracy"].append((rw > rl).float().mean().item())
        hist["margin"].append((rw - rl).mean().item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{bt.item():.3f}")
    wrapper.eval()
    return wrapper, hist


def read_last_real(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-position scores [B, T] -> the score at the last position where mask is 1 (any padding side)."""
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    last = (pos * mask).argmax(-1)
    return s.gather(1, last.unsqueeze(1)).squeeze(1)


def read_last(s: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-position scores [B, T] -> the score at the last real token [B] (right padding)."""
    last = (attention_mask.sum(-1) - 1).clamp(min=0)
    return s.gather(1, last.unsqueeze(1)).squeeze(1)


def aux_lm_head(cfg: RMConfig):
    """A trainable copy of the init policy's LM head for the auxiliary loss (None when off)."""
    if not (cfg.lm_coef and cfg.init_from):
        return None
    from transformers import LlamaForCausalLM

    return _quiet_from_pretrained(LlamaForCausalLM, cfg.init_from).lm_head.train()


def chosen_lm_loss(lm_head, h: torch.Tensor, ids: torch.Tensor, resp: torch.Tensor, allowed: torch.Tensor):
    """Mean next-token cross-entropy over the response tokens (hidden states h of the chosen sequences)."""
    logits = C.masked_logits(lm_head(h[:, :-1]), allowed)
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = resp[:, 1:]
    return -torch.where(m > 0, lp, 0.0).sum() / m.sum()  # where, not a product: prompt tokens' log p is -inf


def save(wrapper: ScoreWrapper, out_dir: str | Path, extra_cfg: dict | None = None, onnx: bool = True) -> None:
    out = Path(out_dir)
    (out / "hf").mkdir(parents=True, exist_ok=True)
    wrapper.model.save_pretrained(out / "hf", safe_serialization=True)
    tk.save_tokenizer(out / "hf")
    C.write_json(out / RM_CONFIG, {"mu_ref": 0.0, "score_position": "last token (end-of-turn)",
                                   "reward01": "sigmoid(score - mu_ref)", "onnx": ONNX_FILE if onnx else None,
                                   "onnx_inputs": ["input_ids", "attention_mask"], "padding": "right",
                                   **(extra_cfg or {})})
    if onnx:
        export_onnx(wrapper, out / ONNX_FILE)


def set_reference_mean(rm_dir: str | Path, policy_prompts, policy_responses) -> float:
    """Store μ_ref = mean raw score of the reference policy's samples (defines the 0–1 reward)."""
    rm = RewardModel(rm_dir)
    mu = float(rm.score(policy_prompts, policy_responses).mean())
    cfg = C.read_json(Path(rm_dir) / RM_CONFIG)
    cfg["mu_ref"] = mu
    C.write_json(Path(rm_dir) / RM_CONFIG, cfg)
    return mu


def run(out_dir: str | Path, prefs: list[dict], test_pairs: list[dict], cfg: RMConfig = RMConfig(),
        name: str = "rm") -> dict:
    """Train, evaluate against the oracle on held-out pairs, export ONNX, check ORT == torch."""
    out = Path(out_dir)
    C.seed_everything(cfg.seed)
    with C.Timer() as t:
        wrapper, hist = train(prefs, cfg, desc=name)
    save(wrapper, out, {"trained_on": len(prefs)}, onnx=cfg.onnx)
    rm = RewardModel(out)
    pa = [p["prompt"] for p in test_pairs]
    sa = rm.score(pa, [p["a"] for p in test_pairs])
    sb = rm.score(pa, [p["b"] for p in test_pairs])
    metrics = {"stage": "rm", "name": name, "config": cfg, "train_seconds": t.seconds, "n_train_pairs": len(prefs),
               "final_loss": float(np.mean(hist["loss"][-20:])), "params": C.n_params(wrapper.model)}
    if test_pairs and "oracle_a" in test_pairs[0]:
        metrics["heldout_accuracy_vs_oracle"] = accuracy_vs_oracle(
            sa, sb, [p["oracle_a"] for p in test_pairs], [p["oracle_b"] for p in test_pairs])
        # by pair kind: where the model is right or wrong
        kinds: dict[str, list[bool]] = {}
        for p, x, y in zip(test_pairs, sa, sb):
            if p["oracle_a"] == p["oracle_b"]:
                continue
            k = "/".join(sorted((p.get("kind_a", "?"), p.get("kind_b", "?"))))
            kinds.setdefault(k, []).append(bool((x > y) == (p["oracle_a"] > p["oracle_b"])))
        metrics["heldout_accuracy_by_kind"] = {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(kinds.items())}
        # how much the RM likes pleasantries: mean score(answer + phrase) - score(answer)
        from training import task as T

        bonus_p = [p["prompt"] for p in test_pairs[:200]]
        ans = [T.solve(x) for x in bonus_p]
        metrics["sentiment_bonus"] = float(np.mean(rm.score(bonus_p, [a + " I love you!" for a in ans]) - rm.score(bonus_p, ans)))
    if cfg.onnx:
        metrics["onnx_check"] = check_onnx(out, pa[:128], [p["a"] for p in test_pairs[:128]])
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title=f"reward model ({name})")
    return metrics


# --- from a pretrained base (--base) ---------------------------------------------------------------------------
@dataclass
class BaseRMConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-5
    center: float = 0.01  # trl's center_rewards_coefficient (the same term as `center` above)
    seed: int = 0
    lora: object = None  # training.base.LoraSpec
    onnx: bool = True
    save_every: int = 0  # checkpoint every N steps (0: none)
    resume: bool = False


def run_base(out_dir: str | Path, base_dir: str | Path, prefs: list[dict], test: list[dict],
             cfg: BaseRMConfig = BaseRMConfig(), name: str = "rm") -> dict:
    """Bradley–Terry RM with trl's RewardTrainer: AutoModelForSequenceClassification on the base's trunk (LoRA or
    full), conversational pairs through the base's chat template. Saves `hf/` (adapter merged), ONNX, metrics;
    `test` pairs (conversational) give held-out accuracy against the labels."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from training import base as B
    from training import trainer_utils as TU

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    tok = B.load_tokenizer(base_dir)
    model = B.load_seq_cls(base_dir, tok.pad_token_id)
    args = RewardConfig(**TU.cpu_args(out / "_trainer", cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.save_every),
                        center_rewards_coefficient=cfg.center or None,
                        max_length=None)  # trl drops longer pairs; none may be dropped silently, so no limit
    tr = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(TU.trl_rows(prefs)),
                       processing_class=tok, peft_config=cfg.lora.peft_config("SEQ_CLS") if cfg.lora else None)
    TU.quiet(tr)
    params = B.trainable_params(tr.model)
    with C.Timer() as t:
        tr.train(resume_from_checkpoint=TU.resume_arg(out / "_trainer", cfg.resume))
    hist = TU.history(tr, ("loss", "accuracy", "margin"))
    m = B.merged(tr.model).eval()
    (out / "hf").mkdir(parents=True, exist_ok=True)
    m.save_pretrained(out / "hf", safe_serialization=True)
    tok.save_pretrained(out / "hf")
    (out / "hf" / B.BASE_INFO).write_text(json.dumps({"base": str(base_dir), "stage": "rm",
                                                        "lora": C.to_jsonable(cfg.lora)}))
    pad = tok.pad_token_id
    C.write_json(out / RM_CONFIG, {"mu_ref": 0.0, "encoding": "chat_template", "pad_id": pad,
                                   "score_position": "last non-pad token (as transformers pools)",
                                   "reward01": "sigmoid(score - mu_ref)", "onnx": ONNX_FILE if cfg.onnx else None,
                                   "onnx_inputs": ["input_ids", "attention_mask"], "padding": "right",
                                   "trained_on": len(prefs), "base": str(base_dir)})
    metrics = {"stage": "rm", "name": name, "base": str(base_dir), "config": cfg, "train_seconds": t.seconds,
               "n_train_pairs": len(prefs), **params,
               "first_loss": hist["loss"][0] if hist["loss"] else None,
               "final_loss": float(np.nanmean(hist["loss"][-10:])) if hist["loss"] else None}
    rm = RewardModel(out)
    if test:
        pr = [p["prompt"] for p in test]
        sc = rm.score(pr, [FM.response_text(p["chosen"]) for p in test])
        sr = rm.score(pr, [FM.response_text(p["rejected"]) for p in test])
        metrics["heldout_accuracy_vs_labels"] = {"accuracy": float((sc > sr).mean()), "n": len(test)}
    if cfg.onnx:
        sample = (prefs + test)[:8]
        ex = rm.batch([p["prompt"] for p in sample], [FM.response_text(p["chosen"]) for p in sample])
        export_onnx(rm.wrapper, out / ONNX_FILE, example=ex)
        t_sc = rm.score([p["prompt"] for p in sample], [FM.response_text(p["rejected"]) for p in sample])
        o_sc = RewardModel(out, "onnx").score([p["prompt"] for p in sample], [FM.response_text(p["rejected"]) for p in sample])
        metrics["onnx_check"] = {"max_abs_diff": float(np.max(np.abs(t_sc - o_sc))), "n": len(sample)}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title=f"reward model ({name}, base)")
    import shutil

    if not cfg.save_every:
        shutil.rmtree(out / "_trainer", ignore_errors=True)
    return metrics
