"""Distillation: a teacher policy into a student with <= 0.25x its parameters; two methods, measured.

Both students start from the same warm start (a short SFT on the demonstrations — on-policy methods need a
student whose samples are not noise) and then get the same number of steps of one of:

- sequence-level KD (Kim & Rush 2016): the teacher samples responses (temperature 1), the student is trained
  with cross-entropy on them;
- on-policy reverse KL (GKD with λ = 1, Agarwal et al. 2024): the student samples responses, and the loss is
  the exact per-token KL(π_student ‖ π_teacher) over the vocabulary at every response position (gradients flow
  through the student's distributions, not through the sampling).

The winner (higher oracle score on held-out prompts) is saved as the student; metrics.json says which won.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import common as C
from training import sft as S
from training import task as T
from training import tiny


@dataclass
class DistillConfig:
    student_size: str = "micro"
    warmup_steps: int = 300  # SFT warm start of the student
    steps: int = 300  # per method, after the warm start
    batch_size: int = 64
    lr: float = 2e-3
    kd_lr: float = 1e-3
    seed: int = 0
    eval_prompts: int = 400
    n_demos: int = 20000


def reverse_kl_step(student, teacher, prompts, allowed, seed) -> torch.Tensor:
    _, rids = C.sample_responses(student, prompts, seed=seed, return_ids=True)
    student.train()
    seqs = [C.prompt_ids(p) + r for p, r in zip(prompts, rids)]
    rm = [[0] * len(C.prompt_ids(p)) + [1] * len(r) for p, r in zip(prompts, rids)]
    ids, att, rmask = C.pad_batch(seqs, rm)
    m = rmask[:, 1:] > 0
    s_lp = C.token_logprobs(student, ids, att, allowed)["logp_all"]
    with torch.no_grad():
        t_lp = C.token_logprobs(teacher, ids, att, allowed)["logp_all"]
    s_p = s_lp.exp()
    diff = torch.where(torch.isfinite(s_lp), s_lp - t_lp.clamp(min=-1e4), 0.0)
    kl = (s_p * diff).sum(-1)  # KL(student || teacher) per position
    return torch.where(m, kl, 0.0).sum() / m.sum()


def oracle_of(model, prompts, seed) -> np.ndarray:
    r = C.sample_responses(model, prompts, seed=seed)
    return np.array([T.oracle_score(p, x) for p, x in zip(prompts, r)])


def run(out_dir: str | Path, teacher_dir: str | Path, cfg: DistillConfig = DistillConfig(), demos=None) -> dict:
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    teacher = C.load_policy(teacher_dir)
    allowed = C.allowed_token_mask(teacher.config.vocab_size)
    if demos is None:
        demos = T.make_demonstrations(cfg.n_demos, seed=cfg.seed + 1)
    student = LlamaForCausalLM(tiny.llama_config(cfg.student_size))
    hist_w = S.train_on_pairs(student, [d["prompt"] for d in demos], [d["completion"] for d in demos],
                              steps=cfg.warmup_steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=30,
                              weight_decay=0.01, seed=cfg.seed, desc="distill warm start")
    warm = {k: v.detach().clone() for k, v in student.state_dict().items()}
    rng = random.Random(cfg.seed + 9)
    prompt_rng = random.Random(cfg.seed + 777)
    results: dict = {}
    hist: dict[str, list[float]] = {"warm_start_loss": hist_w["loss"]}

    # (a) sequence-level KD on teacher samples
    with C.Timer() as t:
        kd_prompts = [T.make_example(prompt_rng).prompt for _ in range(cfg.steps * cfg.batch_size // 4)]
        kd_resp = C.sample_responses(teacher, kd_prompts, seed=cfg.seed + 5)
        seq_student = LlamaForCausalLM(tiny.llama_config(cfg.student_size))
        seq_student.load_state_dict(warm)
        h = S.train_on_pairs(seq_student, kd_prompts, kd_resp, steps=cfg.steps, batch_size=cfg.batch_size,
                             lr=cfg.kd_lr, warmup=10, weight_decay=0.01, seed=cfg.seed, desc="distill seq-KD")
    hist["seq_kd_loss"] = h["loss"]
    results["sequence_level"] = {"train_seconds": t.seconds}

    # (b) on-policy reverse KL on student samples
    with C.Timer() as t:
        rk_student = LlamaForCausalLM(tiny.llama_config(cfg.student_size))
        rk_student.load_state_dict(warm)
        opt = torch.optim.AdamW(rk_student.parameters(), lr=cfg.kd_lr, weight_decay=0.01, betas=(0.9, 0.98))
        hist["reverse_kl"] = []
        for step in C.progress(range(cfg.steps), desc="distill reverse-KL"):
            for g in opt.param_groups:
                g["lr"] = C.lr_at(step, cfg.steps, cfg.kd_lr, 10)
            prompts = [T.make_example(prompt_rng).prompt for _ in range(cfg.batch_size)]
            loss = reverse_kl_step(rk_student, teacher, prompts, allowed, rng.randrange(2**31))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rk_student.parameters(), 1.0)
            opt.step()
            hist["reverse_kl"].append(loss.item())
        rk_student.eval()
    results["on_policy_reverse_kl"] = {"train_seconds": t.seconds}

    eval_prompts = T.make_prompts(cfg.eval_prompts, seed=cfg.seed + 20_000)
    t_sc = oracle_of(teacher, eval_prompts, cfg.seed + 1)
    w_student = LlamaForCausalLM(tiny.llama_config(cfg.student_size))
    w_student.load_state_dict(warm)
    w_student.eval()
    from training.evaluate import mean_ci

    scores = {"teacher": t_sc, "warm_start": oracle_of(w_student, eval_prompts, cfg.seed + 1),
              "sequence_level": oracle_of(seq_student, eval_prompts, cfg.seed + 1),
              "on_policy_reverse_kl": oracle_of(rk_student, eval_prompts, cfg.seed + 1)}
    for k in ("sequence_level", "on_policy_reverse_kl"):
        results[k]["oracle_score"] = mean_ci(scores[k])
        results[k]["ratio_to_teacher"] = float(scores[k].mean() / max(t_sc.mean(), 1e-9))
    winner = max(("sequence_level", "on_policy_reverse_kl"), key=lambda k: scores[k].mean())
    best = seq_student if winner == "sequence_level" else rk_student
    best.eval()
    tiny.save_policy(best, out)
    tp, sp = C.n_params(teacher), C.n_params(best)
    metrics = {"stage": "distill", "config": cfg, "teacher": str(teacher_dir), "teacher_params": tp,
               "student_params": sp, "param_ratio": sp / tp, "teacher_oracle": mean_ci(t_sc),
               "warm_start_oracle": mean_ci(scores["warm_start"]), "methods": results, "winner": winner,
               "student_ratio_to_teacher": float(scores[winner].mean() / max(t_sc.mean(), 1e-9))}
    C.write_json(out / "metrics.json", metrics)
    C.write_json(out / "history.json", hist)
    C.plot_curves(hist, out / "curves.png", title="distillation")
    return metrics


# --- across sizes in one family (--student-config) -------------------------------------------------------------
@dataclass
class BaseDistillConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-4
    n_samples: int = 512  # teacher responses to train on
    max_new_tokens: int = 64
    seed: int = 0
    lora: object = None
    save_every: int = 0
    resume: bool = False


def student_config(teacher_dir: str | Path, spec: str | dict):
    """The teacher's config with the given fields changed (a JSON object, inline or a file), e.g.
    {"num_hidden_layers": 1}: same family, same tokenizer and vocabulary, smaller."""
    import json as _json

    from transformers import AutoConfig

    if isinstance(spec, str):
        p = Path(spec)
        try:
            spec = _json.loads(p.read_text() if p.is_file() else spec)
        except ValueError as e:
            raise SystemExit(f"error: --student-config {spec!r}: not a JSON object or a JSON file ({e})") from None
    if not isinstance(spec, dict):
        raise SystemExit("error: --student-config must be a JSON object of config fields, e.g. {\"num_hidden_layers\": 1}")
    cfg = AutoConfig.from_pretrained(str(teacher_dir))
    for k, v in spec.items():
        if k in ("vocab_size", "model_type", "architectures"):
            raise SystemExit(f"error: --student-config may not change {k!r}: the student shares the teacher's tokenizer")
        if not hasattr(cfg, k):
            raise SystemExit(f"error: --student-config: {type(cfg).__name__} has no field {k!r}")
        setattr(cfg, k, v)
    if getattr(cfg, "layer_types", None) is not None:  # per-layer attention types follow the new depth
        cfg.layer_types = list(cfg.layer_types)[: cfg.num_hidden_layers] + [cfg.layer_types[-1]] * max(
            0, cfg.num_hidden_layers - len(cfg.layer_types))
    return cfg


def run_base(out_dir: str | Path, teacher_dir: str | Path, spec, prompts: list, cfg: BaseDistillConfig) -> dict:
    """Sequence-level KD (Kim & Rush 2016) across sizes: the teacher answers the prompts through its chat template,
    the student — the teacher's config made smaller, initialised from the teacher's weights wherever the shapes
    agree (embeddings, norms, the first layers when widths match) — is trained on those answers with trl's
    SFTTrainer (training/sft.run_base)."""
    import shutil

    from transformers import AutoModelForCausalLM

    from training import base as B
    from training import sft as S
    from training.chat import TemplateCodec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    C.seed_everything(cfg.seed)
    teacher = B.load_causal_lm(teacher_dir)
    codec = TemplateCodec.from_dir(teacher_dir)
    scfg = student_config(teacher_dir, spec)
    student = AutoModelForCausalLM.from_config(scfg, dtype=torch.float32)
    tsd = teacher.state_dict()
    same = {k: v for k, v in tsd.items() if k in student.state_dict() and student.state_dict()[k].shape == v.shape}
    student.load_state_dict(same, strict=False)
    init = out / "_student_init"
    B.save_policy(student, codec.tok, init, teacher_dir, B.BaseInfo(base=str(teacher_dir), stage="distill-init"))
    ps = [prompts[i % len(prompts)] for i in range(cfg.n_samples)]
    with C.Timer() as t_gen:
        texts, _ = codec.sample(teacher, ps, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens)
    from training.formats import to_conversational

    rows = [to_conversational({"prompt": p, "completion": r}) for p, r in zip(ps, texts) if r.strip()]
    res = S.run_base(out, init, rows, S.BaseSFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                                       seed=cfg.seed, lora=cfg.lora, save_every=cfg.save_every,
                                                       resume=cfg.resume))
    info = B.BaseInfo(base=str(teacher_dir), stage="distill", parent=str(teacher_dir))
    (out / B.BASE_INFO).write_text(C.json.dumps(C.to_jsonable(info), indent=2))
    shutil.rmtree(init, ignore_errors=True)
    tp, sp = C.n_params(teacher), C.n_params(student)
    metrics = {**res, "stage": "distill", "method": "sequence-level KD (teacher samples, SFT)",
               "teacher": str(teacher_dir), "student_config": spec, "teacher_params": tp, "student_params": sp,
               "param_ratio": sp / tp, "initialised_from_teacher": sorted(same)[:8] + (["..."] if len(same) > 8 else []),
               "n_initialised_tensors": len(same), "teacher_sampling_seconds": t_gen.seconds,
               "n_kd_rows": len(rows)}
    C.write_json(out / "metrics.json", metrics)
    return metrics
