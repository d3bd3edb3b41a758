"""What every trl trainer of the `--base` stages shares: CPU arguments, checkpoints and resume, quiet logs,
the loss history, rows without our bookkeeping keys."""

from __future__ import annotations

import logging
from pathlib import Path

from training import common as C


def cpu_args(work_dir: str | Path, steps: int, batch_size: int, lr: float, seed: int, save_every: int = 0) -> dict:
    """transformers.TrainingArguments fields for a CPU run: no bf16/fp16, no gradient checkpointing, no reports;
    a checkpoint every `save_every` steps (`--save-every`), which `--resume` continues from."""
    return dict(output_dir=str(work_dir), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
                lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, report_to="none", logging_steps=1, seed=seed, data_seed=seed,
                dataloader_num_workers=0, remove_unused_columns=True,
                save_strategy="steps" if save_every else "no", save_steps=save_every or 500, save_total_limit=2,
                disable_tqdm=C.progress([], disable=None).disable)


def resume_arg(work_dir: str | Path, resume: bool):
    """True when asked to resume and a checkpoint exists (trl/transformers then picks the latest)."""
    if not resume:
        return None
    ckpts = sorted(Path(work_dir).glob("checkpoint-*"))
    if not ckpts:
        raise SystemExit(f"--resume: no checkpoint in {work_dir} (run with --save-every N first)")
    return True


def quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    for name in ("trl", "transformers.trainer", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    trainer.remove_callback(PrinterCallback)  # the per-step dicts go to history.json and curves.png instead


def history(trainer, keys) -> dict[str, list[float]]:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {k: [h.get(k, float("nan")) for h in logs] for k in keys}


def trl_rows(rows: list[dict]) -> list[dict]:
    """Only the columns trl reads (prompt/completion/messages/chosen/rejected): our ids and line numbers go."""
    keep = ("prompt", "completion", "messages", "chosen", "rejected")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def check_nothing_dropped(trainer, n_rows: int, max_length: int | None) -> None:
    """trl drops rows that truncation leaves without a trainable token (a prompt filling max_length). Nothing may
    be trained on with rows silently gone: stop and say what to change."""
    n = len(trainer.train_dataset)
    if n < n_rows:
        raise SystemExit(f"error: {n_rows - n} of {n_rows} rows have no completion token within --max-length "
                         f"{max_length} (their prompt fills it) and trl would drop them: raise --max-length or "
                         "shorten or remove those rows")
