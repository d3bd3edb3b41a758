"""The default pipeline, end to end:

    sft -> data (pairs: synthetic candidates + the SFT policy's own samples; simulated raters, 30% noisy;
                 a biased cohort too)
      -> rm (Dawid–Skene labels) + rm_biased (biased cohort)
      -> dpo, ppo (adaptive KL, full mode), incident (PPO vs rm_biased, weak fixed KL), distill (full mode)
      -> eval (each candidate vs SFT) -> gate -> export versions

Out dir layout:
    data/ sft/ rm/ rm_biased/ dpo/ ppo/ incident/ distill/   each with metrics.json (+ curves.png)
    eval/<name>.json  gate/<name>.json
    versions/<name>/  HF dir + value_head/value_head.safetensors + manifest.json  (sft, dpo, ppo, incident, student)
    pipeline.json     timings and the headline figures

`--fast` (tests, the incident demo): smaller data and budgets, no good-PPO and no distillation stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from training import common as C


@dataclass
class PipelineConfig:
    fast: bool = False
    seed: int = 0
    stages: tuple[str, ...] = ("sft", "data", "rm", "dpo", "ppo", "incident", "distill", "eval", "export")
    n_pairs: int = 10000  # RM accuracy vs the oracle (seed 0): 4000 pairs, 300 steps 0.898; 10000 pairs, 400 steps 0.908
    sft_steps: int = 500
    # The audit RM: the SFT policy's 2 layers + 2 identity-initialised ones, with an auxiliary next-token loss on
    # the chosen responses (training/reward_model.py says why). Held-out accuracy vs the oracle, DS labels, 1
    # thread, seeds 0 / 1: 2+0 layers, 400 steps 0.904 / 0.877; 2+2 layers 0.909 (seed 0); 2+2, lm_coef 0.5, 400
    # steps 0.911 / 0.927; 2+2, lm_coef 1.0, 800 steps 0.925 (seed 0).
    rm_steps: int = 800
    rm_extra_layers: int = 2
    rm_lm_coef: float = 1.0
    rm_biased_steps: int = 120
    dpo_steps: int = 150
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 0.1
    ppo_iterations: int = 60
    incident_iterations: int = 40
    distill_warmup: int = 400
    distill_steps: int = 250
    eval_prompts: int = 400
    quick_eval_prompts: int = 256
    incident_kl_coef: float = 0.02  # weak and fixed: the incident's configuration error
    gate: dict = field(default_factory=dict)  # GateConfig overrides

    @classmethod
    def make(cls, fast: bool = False, seed: int = 0, **kw) -> "PipelineConfig":
        if fast:
            # fast: the 2-layer RM (half the cost; fast mode is for tests and the demo, not the accuracy target)
            base = dict(fast=True, n_pairs=2000, sft_steps=300, rm_steps=120, rm_biased_steps=80, dpo_steps=80,
                        rm_extra_layers=0, rm_lm_coef=0.0, incident_iterations=25, eval_prompts=200, quick_eval_prompts=64,
                        stages=("sft", "data", "rm", "dpo", "incident", "eval", "export"))
        else:
            base = {}
        base.update(kw)
        return cls(seed=seed, **base)


def run(out_dir: str | Path, cfg: PipelineConfig = PipelineConfig()) -> dict:
    from training import data as D
    from training import dpo as DPO
    from training import evaluate as E
    from training import export as X
    from training import gate as G
    from training import ppo as P
    from training import reward_model as RM
    from training import sft as S
    from training import task as T

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed
    timings: dict[str, float] = {}
    summary: dict = {"config": cfg, "out_dir": str(out), "torch_threads": C.configure_threads()}
    st = set(cfg.stages)

    def timed(name, fn):
        with C.Timer() as t:
            r = fn()
        timings[name] = round(t.seconds, 2)
        C.write_json(out / "pipeline.json", {**summary, "timings": timings})
        return r

    with C.Timer() as total:
        scfg = S.SFTConfig(steps=cfg.sft_steps, seed=seed, eval_prompts=cfg.quick_eval_prompts)
        sm = timed("sft", lambda: S.run(out / "sft", scfg))
        summary["sft"] = {k: sm[k] for k in ("oracle_sampled", "exact_sampled", "sentiment_rate_sampled", "oracle_greedy")}
        sft_model = C.load_policy(out / "sft")

        dcfg = D.DataConfig(n_pairs=cfg.n_pairs, n_test_pairs=400 if cfg.fast else 600, seed=seed)
        dm = timed("data", lambda: D.build(out / "data", dcfg, policy=sft_model))
        test_pairs = C.read_jsonl(out / "data" / "pairs_test.jsonl")
        summary["label_accuracy_vs_oracle"] = {k: v["accuracy"] for k, v in dm["label_accuracy_vs_oracle"].items()}
        summary["agreement"] = {"cohens_kappa": dm["agreement"]["cohens_kappa"]["mean"],
                                "krippendorff_alpha": dm["agreement"]["krippendorff_alpha_nominal"]}

        # the reference policy's samples define the 0-1 reward scale of every RM (reward_model.py)
        ref_prompts = T.make_prompts(256, seed=seed + 4242)
        ref_resp = C.sample_responses(sft_model, ref_prompts, seed=seed)

        def train_rm(name, prefs_file, steps, **arch):
            prefs = C.read_jsonl(out / "data" / prefs_file)
            rcfg = RM.RMConfig(steps=steps, seed=seed, init_from=str(out / "sft"), **arch)
            m = RM.run(out / name, prefs, test_pairs, rcfg, name=name)
            m["mu_ref"] = RM.set_reference_mean(out / name, ref_prompts, ref_resp)
            C.write_json(out / name / "metrics.json", m)
            return m

        rmm = timed("rm", lambda: train_rm("rm", "prefs_ds.jsonl", cfg.rm_steps, extra_layers=cfg.rm_extra_layers,
                                           lm_coef=cfg.rm_lm_coef))
        summary["rm_accuracy_vs_oracle"] = rmm["heldout_accuracy_vs_oracle"]["accuracy"]
        summary["rm_onnx_max_abs_diff"] = rmm.get("onnx_check", {}).get("max_abs_diff")
        if "incident" in st:
            # the biased RM keeps the plain 2-layer recipe: it exists to be hacked (the incident), not to be accurate
            rmb = timed("rm_biased", lambda: train_rm("rm_biased", "prefs_biased.jsonl", cfg.rm_biased_steps))
            summary["rm_biased_accuracy_vs_oracle"] = rmb["heldout_accuracy_vs_oracle"]["accuracy"]
        audit = RM.RewardModel(out / "rm")

        candidates: dict[str, dict] = {}
        if "dpo" in st:
            dcfg2 = DPO.DPOStageConfig(steps=cfg.dpo_steps, lr=cfg.dpo_lr, beta=cfg.dpo_beta,
                                       sft_weight=cfg.dpo_sft_weight, seed=seed, eval_prompts=cfg.quick_eval_prompts)
            prefs = C.read_jsonl(out / "data" / "prefs_ds.jsonl")
            timed("dpo", lambda: DPO.run(out / "dpo", out / "sft", prefs, dcfg2))
            candidates["dpo"] = {"dir": out / "dpo", "rm": out / "rm"}
        if "ppo" in st:
            pcfg = P.PPOConfig(iterations=cfg.ppo_iterations, seed=seed, eval_prompts=cfg.quick_eval_prompts)
            timed("ppo", lambda: P.run(out / "ppo", out / "sft", audit.reward01, pcfg, name="ppo"))
            candidates["ppo"] = {"dir": out / "ppo", "rm": out / "rm"}
        if "incident" in st:
            biased = RM.RewardModel(out / "rm_biased")
            icfg = P.PPOConfig(iterations=cfg.incident_iterations, seed=seed, init_kl_coef=cfg.incident_kl_coef,
                               adaptive_kl=False, eval_prompts=cfg.quick_eval_prompts)
            timed("incident", lambda: P.run(out / "incident", out / "sft", biased.reward01, icfg, name="incident"))
            candidates["incident"] = {"dir": out / "incident", "rm": out / "rm_biased"}
        if "distill" in st:
            from training import distill as DI

            teacher = out / "dpo" if "dpo" in candidates else out / "sft"
            dicfg = DI.DistillConfig(warmup_steps=cfg.distill_warmup, steps=cfg.distill_steps, seed=seed)
            dim = timed("distill", lambda: DI.run(out / "distill", teacher, dicfg))
            summary["distill"] = {k: dim[k] for k in ("winner", "param_ratio", "student_ratio_to_teacher")}
            candidates["student"] = {"dir": out / "distill", "rm": out / "rm"}

        verdicts: dict[str, dict] = {}
        if "eval" in st:
            ecfg = E.EvalConfig(n_prompts=cfg.eval_prompts, seed=seed)
            gcfg = G.GateConfig(**cfg.gate)

            def do_eval():
                for name, c in candidates.items():
                    ev = E.run(out / "eval" / f"{name}.json", c["dir"], out / "sft", reference_dir=out / "sft",
                               rm_dir=c["rm"], test_pairs=test_pairs, cfg=ecfg, names=(name, "sft"))
                    verdicts[name] = G.gate(ev, gcfg)
                    C.write_json(out / "gate" / f"{name}.json", verdicts[name])
                    row = {"oracle_win_rate": ev["win_rate_oracle"], "rm_win_rate": ev.get("win_rate_rm"),
                           "oracle_score": ev["candidate"]["oracle_score"],
                           "incumbent_oracle_score": ev["incumbent"]["oracle_score"],
                           "rm_reward01": ev["candidate"].get("rm_reward01"),
                           "incumbent_rm_reward01": ev["incumbent"].get("rm_reward01"),
                           "kl_to_reference": ev["candidate"].get("kl_to_reference", {}).get("mean"),
                           "i_love_you_rate": ev["candidate"]["i_love_you_rate"],
                           "verdict": verdicts[name]["verdict"], "reasons": verdicts[name]["reasons"]}
                    summary.setdefault("candidates", {})[name] = row
                # the incident judged by the audit (unbiased) RM as well
                if "incident" in candidates:
                    ev = E.compare(out / "incident", out / "sft", reference_dir=out / "sft", rm_dir=out / "rm",
                                   cfg=ecfg, names=("incident", "sft"))
                    C.write_json(out / "eval" / "incident_audit_rm.json", ev)
                    summary["candidates"]["incident"]["audit_rm_win_rate"] = ev["win_rate_rm"]

            timed("eval", do_eval)

        if "export" in st:
            def do_export():
                vers = out / "versions"
                data_files = sorted((out / "data").glob("*.jsonl"))
                base = {"verdict": "PASS", "reasons": [], "checks": {}, "baseline": True,
                        "note": "incumbent baseline: nothing to compare against"}
                X.export_version(out / "sft", vers, "sft", parent=None, gate=base, metrics=summary.get("sft", {}),
                                 data_files=data_files, config={"pipeline": cfg, "stage": "sft"}, stage="sft",
                                 value_reward_fn=audit.reward01, audit_rm=out / "rm", seed=seed)
                for name, c in candidates.items():
                    vname = "student" if name == "student" else name
                    X.export_version(c["dir"], vers, vname, parent="sft", gate=verdicts.get(name),
                                     metrics=summary.get("candidates", {}).get(name, {}), data_files=data_files,
                                     config={"pipeline": cfg, "stage": name}, stage=name,
                                     value_reward_fn=audit.reward01, audit_rm=out / "rm", seed=seed)
            timed("export", do_export)
    timings["total"] = round(total.seconds, 2)
    summary["timings"] = timings
    summary["versions"] = sorted(p.name for p in (out / "versions").iterdir()) if (out / "versions").exists() else []
    C.write_json(out / "pipeline.json", summary)
    return summary


def headline(summary: dict) -> str:
    lines = [f"pipeline done in {summary['timings']['total']:.0f}s -> {summary['out_dir']}/versions: {summary['versions']}"]
    lines.append(f"  RM accuracy vs oracle: {summary.get('rm_accuracy_vs_oracle')}")
    for name, r in summary.get("candidates", {}).items():
        w = r["oracle_win_rate"]
        from training.gate import win_rate_prose

        lines.append(f"  {name} vs sft: {win_rate_prose('oracle', w)}"
                     f"  gate {r['verdict']} {('; '.join(r['reasons']))[:160]}")
    return "\n".join(lines)
