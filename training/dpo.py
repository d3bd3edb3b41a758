"""Direct Preference Optimization with trl's DPOTrainer (CPU flags: no bf16, no gradient checkpointing).

    loss = -log σ(β [log π/π_ref (y_w) − log π/π_ref (y_l)])       (Rafailov et al. 2023; ln 2 at step 0)

Data: resolved pairs {"prompt", "chosen", "rejected"} turned into trl's conversational format, so trl applies
the policy's chat template (the same one vLLM serves with). The reference is a frozen copy of the SFT policy.
trl logs rewards/{chosen,rejected,margins,accuracies} but no KL to the reference: `evaluate` measures that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import common as C
from training import tiny


@dataclass
class DPOStageConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    beta: float = 0.1
    warmup_ratio: float = 0.05
    sft_weight: float = 0.1  # RPO-style NLL term on the chosen answer (keeps its likelihood up); 0 = pure DPO
    seed: int = 0
    eval_prompts: int = 256
    lora: object = None  # training.base.LoraSpec (--base lineages)
    max_length: int = 128
    save_every: int = 0
    resume: bool = False


def make_trainer(policy_dir: str | Path, prefs: list[dict], cfg: DPOStageConfig, work_dir: str | Path):
    """A DPOTrainer for the policy at `policy_dir` (also the reference) on the given pairs."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    for name in ("trl", "transformers.trainer", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from training.base import is_template_dir, load_causal_lm, load_tokenizer

    if is_template_dir(policy_dir) or cfg.lora is not None:
        # a --base checkpoint: its own template; with LoRA the reference is the base with the adapter disabled
        # (trl's way: no second copy of the weights in memory)
        model, tok = load_causal_lm(policy_dir), load_tokenizer(policy_dir)
        ref = None if cfg.lora is not None else load_causal_lm(policy_dir)
    else:
        model = C.load_policy(policy_dir)
        ref = C.load_policy(policy_dir)
        tok = AutoTokenizer.from_pretrained(str(policy_dir))
    args = DPOConfig(
        output_dir=str(work_dir), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, beta=cfg.beta, lr_scheduler_type="cosine", warmup_steps=max(1, int(cfg.warmup_ratio * cfg.steps)),
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
        logging_steps=1, seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 500, save_total_limit=2,
        disable_tqdm=C.progress([], disable=None).disable, max_length=cfg.max_length, remove_unused_columns=False,
        loss_type=["sigmoid", "sft"] if cfg.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
    )
    from training.formats import to_conversational as conv
    from training.trainer_utils import trl_rows

    ds = Dataset.from_list(trl_rows([conv(p) for p in prefs]))
    tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                    peft_config=cfg.lora.peft_config() if cfg.lora is not None else None)
    from transformers.trainer_callback import PrinterCallback

    tr.remove_callback(PrinterCallback)  # the per-step dicts go to history.json and curves.png instead
    from training.trainer_utils import check_nothing_dropped

    check_nothing_dropped(tr, len(prefs), cfg.max_length)
    return tr


def initial_loss(policy_dir: str | Path, prefs: list[dict], beta: float = 0.1, work_dir: str | Path = "/tmp/dpo_init") -> float:
    """DPO loss of the untrained policy against itself as the reference (must be ln 2)."""
    cfg = DPOStageConfig(steps=1, batch_size=min(8, len(prefs)), beta=beta, sft_weight=0.0)
    tr = make_trainer(policy_dir, prefs, cfg, work_dir)
    batch = next(iter(tr.get_train_dataloader()))
    tr.model.eval()
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, batch)
    return float(loss)


def run(out_dir: str | Path, policy_dir: str | Path, prefs: list[dict], cfg: DPOStageConfig = DPOStageConfig()) -> dict:
    from training import sft as S
    from training import task as T

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    tr = make_trainer(policy_dir, prefs, cfg, out / "_trainer")
    from training import base as B
    from training.trainer_utils import resume_arg

    params = B.trainable_params(tr.model)
    with C.Timer() as t:
        tr.train(resume_from_checkpoint=resume_arg(out / "_trainer", cfg.resume))
    logs = [h for h in tr.state.log_history if "loss" in h]
    hist = {k: [h.get(k, np.nan) for h in logs] for k in
            ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")}
    tr.model.eval()
    if B.is_template_dir(policy_dir) or cfg.lora is not None:
        B.save_policy(tr.model, tr.processing_class, out, policy_dir,
                      B.BaseInfo(base=str(policy_dir), stage="dpo", lora=C.to_jsonable(cfg.lora), parent=str(policy_dir)))
        ev = {}
    else:
        tiny.save_policy(tr.model, out)
        eval_prompts = T.make_prompts(cfg.eval_prompts, seed=cfg.seed + 10_000)
        ev = S.quick_eval(tr.model, eval_prompts, seed=cfg.seed)
    metrics = {"stage": "dpo", "config": cfg, "parent": str(policy_dir), "train_seconds": t.seconds, **params,
               "n_pairs": len(prefs), "first_loss": hist["loss"][0] if hist["loss"] else None,
               "final_loss": float(np.nanmean(hist["loss"][-10:])) if hist["loss"] else None, **ev}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title="DPO")
    import shutil

    if not cfg.save_every:
        shutil.rmtree(out / "_trainer", ignore_errors=True)
    return metrics
