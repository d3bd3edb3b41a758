"""Supervised fine-tuning: demonstrations -> base policy (a tiny Llama in HF format).

Loss: next-token cross-entropy on the response tokens only (prompt tokens are context). AdamW, linear warm-up,
cosine decay. Writes `out/` = HF model dir + `metrics.json` + `curves.png`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training import common as C
from training import task as T
from training import tiny


@dataclass
class SFTConfig:
    size: str = "tiny"
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    n_demos: int = 20000
    eval_prompts: int = 256
    seed: int = 0
    task: T.TaskConfig = field(default_factory=T.TaskConfig)
    init_from: str | None = None  # start from an existing policy dir instead of random weights


def load_demos(path: str | Path) -> list[dict]:
    """JSONL demonstrations: {"prompt", "completion"} (trl's prompt-completion format)."""
    rows = C.read_jsonl(path)
    for r in rows:
        if "completion" not in r and "response" in r:
            r["completion"] = r["response"]
    return rows


def train_on_pairs(model, prompts: list[str], responses: list[str], *, steps: int, batch_size: int, lr: float,
                   warmup: int, weight_decay: float, seed: int, desc: str = "sft") -> dict[str, list[float]]:
    """Cross-entropy on response tokens for (prompt, response) examples. Returns the loss history."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    allowed = C.allowed_token_mask(model.config.vocab_size)
    idx = list(range(len(prompts)))
    hist: dict[str, list[float]] = {"loss": [], "lr": []}
    model.train()
    bar = C.progress(range(steps), desc=desc)
    for step in bar:
        b = rng.sample(idx, min(batch_size, len(idx)))
        ids, att, rm = C.collate_prompt_response([prompts[i] for i in b], [responses[i] for i in b])
        cur_lr = C.lr_at(step, steps, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        res = C.token_logprobs(model, ids, att, allowed)
        mask = rm[:, 1:]
        loss = -(torch.where(mask > 0, res["logp"], 0.0)).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["loss"].append(loss.item())
        hist["lr"].append(cur_lr)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return hist


def quick_eval(model, prompts: list[str], seed: int) -> dict:
    """Mean oracle score (sampled at temperature 1, and greedy), exact rate, pleasantry rate."""
    out = {}
    for name, greedy in (("sampled", False), ("greedy", True)):
        resp = C.sample_responses(model, prompts, seed=seed, greedy=greedy)
        sc = np.array([T.oracle_score(p, r) for p, r in zip(prompts, resp)])
        out[f"oracle_{name}"] = float(sc.mean())
        out[f"exact_{name}"] = float((sc == 1.0).mean())
        out[f"sentiment_rate_{name}"] = float(np.mean([T.has_sentiment(r) for r in resp]))
        out[f"examples_{name}"] = [{"prompt": p, "response": r} for p, r in list(zip(prompts, resp))[:8]]
    return out


def run(out_dir: str | Path, cfg: SFTConfig = SFTConfig(), demos: list[dict] | None = None) -> dict:
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    if demos is None:
        demos = T.make_demonstrations(cfg.n_demos, seed=cfg.seed + 1, cfg=cfg.task)
        C.write_jsonl(out / "demos.jsonl", demos)
    if cfg.init_from:
        model = C.load_policy(cfg.init_from)
    else:
        model = LlamaForCausalLM(tiny.llama_config(cfg.size))
    with C.Timer() as t:
        hist = train_on_pairs(model, [d["prompt"] for d in demos], [d["completion"] for d in demos],
                              steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup,
                              weight_decay=cfg.weight_decay, seed=cfg.seed)
    tiny.save_policy(model, out)
    eval_prompts = T.make_prompts(cfg.eval_prompts, seed=cfg.seed + 10_000, cfg=cfg.task)
    ev = quick_eval(model, eval_prompts, seed=cfg.seed)
    metrics = {"stage": "sft", "config": cfg, "params": C.n_params(model), "train_seconds": t.seconds,
               "final_loss": float(np.mean(hist["loss"][-20:])), "n_demos": len(demos), **ev}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title="SFT")
    return metrics


# --- from a pretrained base (--base) ---------------------------------------------------------------------------
@dataclass
class BaseSFTConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    max_length: int = 1024  # trl truncates longer rows (it does not drop them)
    seed: int = 0
    lora: object = None  # training.base.LoraSpec
    save_every: int = 0
    resume: bool = False


def run_base(out_dir: str | Path, base_dir: str | Path, rows: list[dict], cfg: BaseSFTConfig = BaseSFTConfig()) -> dict:
    """trl's SFTTrainer on conversational rows (prompt/completion: loss on the completion only; messages: on the
    whole conversation, trl's default), LoRA or full. Saves the merged policy as an HF checkpoint."""
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from training import base as B
    from training import trainer_utils as TU

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    tok = B.load_tokenizer(base_dir)
    model = B.load_causal_lm(base_dir)
    args = TrlSFTConfig(**TU.cpu_args(out / "_trainer", cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.save_every),
                        max_length=cfg.max_length, packing=False)
    tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(TU.trl_rows(rows)), processing_class=tok,
                    peft_config=cfg.lora.peft_config() if cfg.lora else None)
    TU.quiet(tr)
    TU.check_nothing_dropped(tr, len(rows), cfg.max_length)
    params = B.trainable_params(tr.model)
    with C.Timer() as t:
        tr.train(resume_from_checkpoint=TU.resume_arg(out / "_trainer", cfg.resume))
    hist = TU.history(tr, ("loss", "mean_token_accuracy"))
    B.save_policy(tr.model, tok, out, base_dir, B.BaseInfo(base=str(base_dir), stage="sft", lora=C.to_jsonable(cfg.lora)))
    metrics = {"stage": "sft", "base": str(base_dir), "config": cfg, "train_seconds": t.seconds, "n_rows": len(rows),
               **params, "first_loss": hist["loss"][0] if hist["loss"] else None,
               "final_loss": float(np.nanmean(hist["loss"][-10:])) if hist["loss"] else None}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title="SFT (base)")
    if not cfg.save_every:
        import shutil

        shutil.rmtree(out / "_trainer", ignore_errors=True)
    return metrics
