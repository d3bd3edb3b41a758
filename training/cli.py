"""`aligngate train <stage>` / `python -m training <stage>`: one subcommand per stage.

    sft       demonstrations -> policy                         rm       preference pairs -> reward model (+ONNX)
    dpo       policy + pairs -> DPO policy                     ppo      policy + RM -> PPO policy (+value head)
    distill   teacher -> smaller student                       eval     candidate vs incumbent (oracle and RM)
    gate      eval JSON -> PASS/FAIL verdict                   export   policy -> version dir + manifest.json
    pipeline  all of it on the default task (--fast for tests)

Without data arguments every stage uses the default task (simulated demonstrations, pairs and raters).
User data is JSONL in trl's formats (training/formats.py): demonstrations {"prompt", "completion"} or
{"messages": [...]}; pairs {"prompt", "chosen", "rejected"} (strings or chat messages) or {"pair_id", "prompt",
"a", "b"} plus rater labels {"pair_id", "rater_id", "choice": "a"|"b"} (aggregated with --aggregate); prompts
{"prompt"}. A malformed row stops the stage with file:line and what is wrong (--skip-invalid: skip and count).

A team's own checkpoint: `--base DIR` (any AutoModelForCausalLM directory with a tokenizer and chat template) on
sft, rm, dpo, ppo, with `--lora r,alpha[,target,...]` for a peft adapter (merged on save). Checkpoints:
`--save-every N`, then `--resume` continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser, out_default: str, fast: bool = True) -> None:
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output directory (default {out_default})")
    p.add_argument("--seed", type=int, default=0)
    if fast:
        p.add_argument("--fast", action="store_true", help="small budgets (tests, smoke runs)")


def _base(p: argparse.ArgumentParser, what: str = "--base") -> None:
    p.add_argument("--base", type=Path, help="a pretrained HF checkpoint dir (tokenizer + chat template) to start from")
    p.add_argument("--lora", help="train a LoRA adapter: r,alpha[,target,...] e.g. 8,16 or 16,32,q_proj,v_proj")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed data rows (counted) instead of stopping")
    p.add_argument("--batch-size", type=int)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aligngate train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="stage", required=True, metavar="stage")

    p = sub.add_parser("sft", help="supervised fine-tuning on demonstrations")
    _common(p, "runs/sft")
    p.add_argument("--demos", type=Path, help="JSONL {prompt, completion} or {messages}; default: the default task's")
    p.add_argument("--size", help="the default tiny policy's preset: micro, nano, tiny (default), small")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float, help="default 2e-3 (tiny), 1e-4 (--base)")
    p.add_argument("--max-length", type=int, help="--base: tokens per chat (default 1024; longer: truncated by trl)")
    _base(p)

    p = sub.add_parser("rm", help="Bradley–Terry reward model, held-out accuracy vs the oracle, ONNX export")
    _common(p, "runs/rm")
    p.add_argument("--init", type=Path, help="policy dir to start the backbone from (recommended: the SFT policy)")
    p.add_argument("--pairs", type=Path, help="pairs JSONL (trl {prompt, chosen, rejected} or {pair_id, prompt, a, b})")
    p.add_argument("--labels", type=Path, help="raw labels JSONL {pair_id, rater_id, choice}")
    p.add_argument("--aggregate", default="ds", choices=["ds", "mv", "single", "all"],
                   help="Dawid–Skene, majority vote (agreement >= 0.6), one random label, every label")
    p.add_argument("--biased", action="store_true", help="default data: train on the biased cohort's labels")
    p.add_argument("--reference", type=Path, help="policy whose samples define the 0-1 reward scale (mu_ref)")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float, help="default 1e-3 (tiny), 5e-5 (--base)")
    p.add_argument("--no-onnx", action="store_true")
    _base(p)

    p = sub.add_parser("dpo", help="Direct Preference Optimization (trl DPOTrainer, CPU)")
    _common(p, "runs/dpo")
    p.add_argument("--policy", type=Path, help="SFT policy dir (also the reference); or --base")
    p.add_argument("--pairs", type=Path, help="pairs JSONL; default: the default task's aggregated pairs")
    p.add_argument("--labels", type=Path)
    p.add_argument("--aggregate", default="ds", choices=["ds", "mv", "single", "all"])
    p.add_argument("--steps", type=int)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, help="tokens per chat (longer ones are truncated by trl; default 128 tiny, 1024 --base)")
    _base(p)

    p = sub.add_parser("ppo", help="PPO with a value head and an adaptive KL controller")
    _common(p, "runs/ppo")
    p.add_argument("--policy", type=Path, help="SFT policy dir (also the reference); or --base")
    p.add_argument("--rm", type=Path, help="reward model dir (from `rm`); or --reward")
    p.add_argument("--reward", help="reward model dir or module:function (e.g. training.task:oracle_rewards)")
    p.add_argument("--prompts", type=Path, help="rollout prompts JSONL {prompt} (a pairs file works too); "
                   "default: the default task's")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--iterations", type=int)
    p.add_argument("--kl-coef", type=float, default=0.05, help="initial β")
    p.add_argument("--target-kl", type=float, help="nats per response (default 1.0; adaptive KL only)")
    p.add_argument("--horizon", type=int, help="default 500 (adaptive KL only)")
    p.add_argument("--fixed-kl", action="store_true", help="no adaptation (the incident's setting)")
    p.add_argument("--lr", type=float, default=1e-4)
    _base(p)

    p = sub.add_parser("distill", help="teacher -> smaller student (seq-level KD vs on-policy reverse KL)")
    _common(p, "runs/distill")
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--student-size", help="the tiny student's preset (default micro; without --student-config)")
    p.add_argument("--student-config", help="a --base teacher: JSON object of config fields to shrink, inline or a "
                   "file, e.g. '{\"num_hidden_layers\": 1}' (same family and tokenizer)")
    p.add_argument("--prompts", type=Path, help="prompts the teacher answers (default: the default task's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    _base(p)

    p = sub.add_parser("eval", help="candidate vs incumbent: oracle and RM win rates with CIs, KL, length, ...")
    _common(p, "runs/eval")
    p.add_argument("--candidate", type=Path, required=True)
    p.add_argument("--incumbent", type=Path, required=True)
    p.add_argument("--reference", type=Path, help="KL reference (default: the incumbent)")
    p.add_argument("--rm", type=Path, help="reward model dir")
    p.add_argument("--test-pairs", type=Path, help="held-out pairs with oracle scores (RM accuracy)")
    p.add_argument("--n-prompts", type=int, help="default 400 (100 with --fast)")
    p.add_argument("--prompts", type=Path, help="evaluation prompts JSONL {prompt} (a pairs file works too); "
                   "default: the default task's held-out prompts")
    p.add_argument("--reward", help="judge: reward model dir or module:function (instead of --rm)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--skip-invalid", action="store_true")

    p = sub.add_parser("gate", help="PASS/FAIL verdict from an eval JSON")
    _common(p, "runs/gate", fast=False)
    p.add_argument("--eval", type=Path, required=True, help="eval JSON (from `eval`)")
    p.add_argument("--min-win-rate-lcb", type=float, default=0.5)
    p.add_argument("--max-kl", type=float, default=10.0)
    p.add_argument("--max-hacking-gap", type=float, default=0.15)
    p.add_argument("--max-length-increase", type=float, default=0.5)

    p = sub.add_parser("export", help="policy -> version dir vLLM loads (+ value head, manifest.json)")
    _common(p, "runs/versions", fast=False)
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--parent")
    p.add_argument("--gate", type=Path, help="gate verdict JSON to record")
    p.add_argument("--metrics", type=Path, help="metrics JSON to record")
    p.add_argument("--rm", type=Path, help="RM to fit the value head with (else the oracle of the default task)")
    p.add_argument("--reward", help="reward model dir or module:function to fit the value head with (instead of --rm)")
    p.add_argument("--prompts", type=Path, help="prompts JSONL to fit the value head on (a pairs file works too); "
                   "default: the default task's")
    p.add_argument("--value-n", type=int, help="sampled responses for the value-head fit (default 512)")
    p.add_argument("--data", type=Path, action="append", default=[],
                   help="a data file the policy was trained on (repeatable): hashed into the manifest's data_hash")

    p = sub.add_parser("pipeline", help="end to end: the default task, or --base DIR --pairs FILE (a team's own)")
    _common(p, "runs/pipeline")
    p.add_argument("--stages", help="comma-separated subset, e.g. sft,data,rm,dpo,incident,eval,export")
    p.add_argument("--base", type=Path, help="a pretrained HF checkpoint dir: rm, dpo, ppo, eval, gate, export from it")
    p.add_argument("--pairs", type=Path, help="with --base: preference pairs JSONL")
    p.add_argument("--labels", type=Path, help="with --base: rater labels for {pair_id, prompt, a, b} pairs")
    p.add_argument("--aggregate", choices=["ds", "mv", "single", "all"], help="with --base and --labels (default ds)")
    p.add_argument("--demos", type=Path, help="with --base: SFT first on these demonstrations")
    p.add_argument("--lora", help="with --base: r,alpha[,target,...] (default 16,32); 'none' for full fine-tuning")
    p.add_argument("--skip-invalid", action="store_true")
    return ap


def _fail(e: Exception) -> SystemExit:
    return SystemExit(f"error: {e}")


def _load(path: Path, kind: str, args):
    """A validated data file (training/formats.py); skipped rows are printed and recorded in the stage's out dir."""
    from training import formats as F

    try:
        loaded = F.load(path, kind, skip_invalid=getattr(args, "skip_invalid", False))
    except F.DataError as e:
        raise _fail(e) from None
    if loaded.skipped:
        print(f"warning: {path}: skipped {len(loaded.skipped)} malformed row(s) (--skip-invalid); first: line "
              f"{loaded.skipped[0]['line']}: {loaded.skipped[0]['reason']}", file=sys.stderr)
    _REPORTS.append(loaded.report())
    return loaded


_REPORTS: list[dict] = []


def _user_prefs(args) -> list[dict]:
    """Resolved preference rows from --pairs (+ --labels): trl preference rows as given, or a/b pairs whose rater
    labels are aggregated (--aggregate)."""
    from training import aggregate as A
    from training import formats as F

    pairs = _load(args.pairs, "pairs", args)
    if pairs.format != "unlabelled_pairs":
        return F.strip_meta(pairs.rows)
    if not getattr(args, "labels", None):
        raise SystemExit(f"error: {args.pairs} holds unlabelled pairs (pair_id, prompt, a, b): give their rater "
                         "labels with --labels FILE ({pair_id, rater_id, choice})")
    labels = _load(args.labels, "labels", args)
    try:
        F.check_pair_ids(pairs, labels)
    except F.DataError as e:
        raise _fail(e) from None
    agg = A.aggregate(F.strip_meta(labels.rows), args.aggregate, seed=args.seed)
    prefs = A.to_trl_pairs(F.strip_meta(pairs.rows), agg)
    print(f"{args.pairs}: {len(pairs.rows)} pairs, {len(labels.rows)} labels -> {len(prefs)} preference rows "
          f"({args.aggregate}; {len(pairs.rows) - len({p['pair_id'] for p in prefs})} pairs without a verdict)",
          file=sys.stderr)
    return prefs


def _prefs(args, out: Path) -> list[dict]:
    """Resolved pairs from user files, or the default task's (built into out/data)."""
    from training import common as C

    if args.pairs:
        return _user_prefs(args)
    from training import data as D

    d = out / "data"
    if not (d / "prefs_ds.jsonl").exists():
        D.build(d, D.DataConfig(n_pairs=1500 if getattr(args, "fast", False) else 10000, seed=args.seed))
    name = "biased" if getattr(args, "biased", False) else args.aggregate
    return C.read_jsonl(d / f"prefs_{name}.jsonl")


def _plain(rows: list[dict]) -> list[dict]:
    """Rows for the byte-level default policy: chats reduced to their text (last user message, assistant text)."""
    from training import formats as F

    out = []
    for r in rows:
        o = dict(r)
        if "prompt" in o:
            o["prompt"] = F.prompt_text(o["prompt"])
        for k in ("chosen", "rejected", "completion"):
            if k in o:
                o[k] = F.response_text(o[k])
        out.append(o)
    return out


def _lora(args):
    from training import base as B

    try:
        return B.parse_lora(getattr(args, "lora", None))
    except B.BaseError as e:
        raise _fail(e) from None


def _check_base(path):
    from training import base as B

    try:
        B.load_tokenizer(path)
    except (B.BaseError, OSError) as e:
        raise _fail(e) from None
    return path


def _refuse(args, dests: list[str], why: str) -> None:
    """A flag this path would ignore stops the stage, naming it and what to do (nothing is dropped silently)."""
    for d in dests:
        if getattr(args, d, None) not in (None, False, 0, [], ""):
            raise SystemExit(f"error: {args.stage} --{d.replace('_', '-')}: {why}")


def _policy_arg(args) -> Path:
    if args.base and args.policy:
        raise SystemExit(f"error: {args.stage} --policy and --base are both given: pass one (--base for a team's "
                         "checkpoint, --policy for a policy directory)")
    p = args.base or args.policy
    if p is None:
        raise SystemExit(f"error: {args.stage} needs --policy DIR or --base DIR")
    from training import base as B

    if args.base or B.is_template_dir(p):
        _check_base(p)
    return p


def _rollout_prompts(args):
    """--prompts: a prompts file, or the prompts of a pairs file."""
    if not args.prompts:
        return None
    rows = _load(args.prompts, "prompts", args).rows  # a pairs file validates as prompts too (its extra keys are kept)
    seen, out = set(), []
    for r in rows:
        key = json.dumps(r["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r["prompt"])
    return out


def _default_demos(n: int, seed: int) -> list[dict]:
    from training import task as T

    return T.make_demonstrations(n, seed=seed + 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _REPORTS.clear()  # data files read by this stage (main may be called once per stage in one process)
    from training import common as C

    out: Path = args.out
    fast = getattr(args, "fast", False)
    if args.stage == "sft":
        from training import sft as S

        if args.base:
            from training import formats as F

            _refuse(args, ["size"], "picks the default tiny policy's preset; --base trains the base's own "
                    "architecture: drop --size")
            base = _check_base(args.base)
            steps = args.steps or (20 if fast else 200)
            bs = args.batch_size or 8
            rows = (_load(args.demos, "sft", args).rows if args.demos
                    else _default_demos(steps * bs, args.seed))
            cfg = S.BaseSFTConfig(steps=steps, batch_size=bs, lr=args.lr or 1e-4, seed=args.seed, lora=_lora(args),
                                  max_length=args.max_length or 1024,
                                  save_every=args.save_every, resume=args.resume)
            res = S.run_base(out, base, [F.to_conversational(r) for r in rows], cfg)
        else:
            _refuse(args, ["lora", "resume", "save_every", "max_length"],
                    "needs --base DIR (the default tiny policy trains in one short run: no adapter, checkpoints or "
                    "token limit)")
            demos = _plain(_load(args.demos, "sft", args).rows) if args.demos else None
            if demos is not None and any("completion" not in d for d in demos):
                raise SystemExit("error: the default tiny policy trains on prompt/completion rows; "
                                 "a {messages} file needs --base")
            cfg = S.SFTConfig(size=args.size or "tiny", steps=args.steps or (300 if fast else 500),
                              lr=args.lr or 2e-3, seed=args.seed,
                              **({"batch_size": args.batch_size} if args.batch_size else {}))
            res = S.run(out, cfg, demos)
    elif args.stage == "rm":
        from training import data as D
        from training import reward_model as RM
        from training import task as T

        if args.base:
            _refuse(args, ["init"], "starts the default tiny RM's backbone; with --base DIR the base is the "
                    "backbone: drop --init (or give that policy as --base)")
        else:
            _refuse(args, ["lora", "resume", "save_every"], "needs --base DIR (the default tiny RM trains in one "
                    "short run: no adapter or checkpoints)")
        prefs = _prefs(args, out)
        if args.base:
            from training import formats as F

            base = _check_base(args.base)
            conv = [F.to_conversational(p) for p in prefs]
            n = max(1, len(conv) // 10) if len(conv) >= 20 else 0  # hold out 10% (accuracy vs the labels)
            cfg = RM.BaseRMConfig(steps=args.steps or (20 if fast else 200), batch_size=args.batch_size or 8,
                                  lr=args.lr or 5e-5, seed=args.seed, lora=_lora(args), onnx=not args.no_onnx,
                                  save_every=args.save_every, resume=args.resume)
            res = RM.run_base(out, base, conv[n:], conv[:n], cfg, name="rm_biased" if args.biased else "rm")
        else:
            prefs = _plain(prefs)
            test = []
            if not args.pairs:
                test = C.read_jsonl(out / "data" / "pairs_test.jsonl")
            else:  # hold out 10% of the user's pairs (accuracy vs labels only: no oracle)
                n = max(1, len(prefs) // 10)
                test_prefs, prefs = prefs[:n], prefs[n:]
                test = [{"pair_id": i, "prompt": p["prompt"], "a": p["chosen"], "b": p["rejected"],
                         **({"oracle_a": T.oracle_score(p["prompt"], p["chosen"]),
                             "oracle_b": T.oracle_score(p["prompt"], p["rejected"])} if T.is_task_prompt(p["prompt"]) else {})}
                        for i, p in enumerate(test_prefs)]
            cfg = RM.RMConfig(steps=args.steps or (120 if fast else 400), seed=args.seed,
                              init_from=str(args.init) if args.init else None, onnx=not args.no_onnx,
                              **({"batch_size": args.batch_size} if args.batch_size else {}),
                              **({"lr": args.lr} if args.lr else {}))
            res = RM.run(out, prefs, test, cfg, name="rm_biased" if args.biased else "rm")
        if args.reference:
            from training.chat import codec_for, load_any_policy

            pol = load_any_policy(args.reference)
            pr = T.make_prompts(256, seed=args.seed + 4242)
            res["mu_ref"] = RM.set_reference_mean(out, pr, codec_for(args.reference).sample(pol, pr, seed=args.seed)[0])
        _ = D
    elif args.stage == "dpo":
        from training import dpo as DPO

        policy = _policy_arg(args)
        from training import base as B

        template = B.is_template_dir(policy) or args.base is not None
        cfg = DPO.DPOStageConfig(steps=args.steps or ((20 if template else 80) if fast else 150), beta=args.beta,
                                 lr=args.lr, seed=args.seed, lora=_lora(args),
                                 batch_size=args.batch_size or (8 if template else 32),
                                 max_length=args.max_length or (1024 if template else 128),
                                 save_every=args.save_every, resume=args.resume)
        prefs = _prefs(args, out)
        res = DPO.run(out, policy, prefs if template else _plain(prefs), cfg)
    elif args.stage == "ppo":
        from training import ppo as P
        from training import rewards as RW

        policy = _policy_arg(args)
        if args.reward and args.rm:
            raise SystemExit("error: ppo --rm and --reward are both given: pass one (--reward takes an RM dir too)")
        if args.fixed_kl:
            _refuse(args, ["target_kl", "horizon"], "steers the adaptive KL controller; --fixed-kl keeps β at "
                    "--kl-coef: drop one of them")
        spec = args.reward or args.rm
        if spec is None:
            raise SystemExit("error: ppo needs --rm DIR or --reward DIR|module:function")
        try:
            fn, _desc = RW.load_reward_fn(spec)
        except RW.RewardSpecError as e:
            raise _fail(e) from None
        from training import base as B

        template = B.is_template_dir(policy) or args.base is not None
        prompts = _rollout_prompts(args)
        cfg = P.PPOConfig(iterations=args.iterations or ((4 if template else 25) if fast else 60),
                          init_kl_coef=args.kl_coef, target_kl=args.target_kl or 1.0, horizon=args.horizon or 500,
                          adaptive_kl=not args.fixed_kl, lr=args.lr, seed=args.seed,
                          batch_size=args.batch_size or (16 if template else 64),
                          minibatch_size=min(args.batch_size or (16 if template else 64), 8 if template else 32),
                          max_new_tokens=args.max_new_tokens or (32 if template else P.C.MAX_NEW_TOKENS),
                          save_every=args.save_every, resume=args.resume)
        res = P.run(out, policy, fn, cfg, prompts=prompts, lora=_lora(args))
    elif args.stage == "distill":
        from training import distill as DI

        _refuse(args, ["base"], "distill takes its teacher as --teacher DIR (a --base checkpoint as teacher: "
                "--teacher DIR --student-config JSON); drop --base")
        if args.student_config:
            _refuse(args, ["student_size"], "picks the tiny student's preset; with --student-config the student "
                    "is the teacher's config made smaller: drop --student-size")
            from training import task as T

            _check_base(args.teacher)
            prompts = _rollout_prompts(args) or T.make_prompts(256, seed=args.seed + 77)
            steps = args.steps or (10 if fast else 200)
            bcfg = DI.BaseDistillConfig(steps=steps, batch_size=args.batch_size or 8, lr=args.lr or 5e-4,
                                        n_samples=32 if fast else 512, max_new_tokens=16 if fast else 64,
                                        seed=args.seed, lora=_lora(args), save_every=args.save_every,
                                        resume=args.resume)
            res = DI.run_base(out, args.teacher, args.student_config, prompts, bcfg)
            summary = {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
            print(json.dumps(C.to_jsonable(summary), indent=2, default=str)[:3000])
            return 0
        _refuse(args, ["lr", "prompts", "lora", "resume", "save_every", "skip_invalid"],
                "applies to distillation across sizes (--student-config JSON, a --base teacher); the default tiny "
                "distillation takes --steps, --batch-size and --student-size")
        cfg = DI.DistillConfig(student_size=args.student_size or "micro", seed=args.seed,
                               **({"warmup_steps": 150, "steps": 60, "eval_prompts": 128} if fast else {}),
                               **({"steps": args.steps} if args.steps else {}),
                               **({"batch_size": args.batch_size} if args.batch_size else {}))
        res = DI.run(out, args.teacher, cfg)
    elif args.stage == "eval":
        from training import evaluate as E

        test = C.read_jsonl(args.test_pairs) if args.test_pairs else None
        cfg = E.EvalConfig(n_prompts=args.n_prompts or (100 if fast else 400), seed=args.seed)
        from training.rewards import RewardSpecError

        try:
            res = E.run(out / "eval.json", args.candidate, args.incumbent, reference_dir=args.reference,
                        rm_dir=args.rm, test_pairs=test, cfg=cfg, prompts=_rollout_prompts(args), judge=args.reward,
                        max_new_tokens=args.max_new_tokens)
        except RewardSpecError as e:
            raise _fail(e) from None
    elif args.stage == "gate":
        from training import gate as G

        cfg = G.GateConfig(min_win_rate_lcb=args.min_win_rate_lcb, max_kl=args.max_kl,
                           max_hacking_gap=args.max_hacking_gap, max_length_increase=args.max_length_increase)
        res = G.run(args.eval, out / "verdict.json", cfg)
        print(json.dumps({"verdict": res["verdict"], "reasons": res["reasons"]}, indent=2))
        return 0 if res["verdict"] == "PASS" else 3
    elif args.stage == "export":
        import numpy as np

        from training import export as X
        from training import task as T

        if args.reward or args.rm:
            from training import rewards as RW

            try:
                fn, _ = RW.load_reward_fn(args.reward or args.rm)
            except RW.RewardSpecError as e:
                raise _fail(e) from None
        else:
            def fn(p, r):
                return np.array([T.oracle_score(a, b) for a, b in zip(p, r)])
        d = X.export_version(args.policy, out, args.version, parent=args.parent,
                             gate=C.read_json(args.gate) if args.gate else None,
                             metrics=C.read_json(args.metrics) if args.metrics else None,
                             config={"cli": vars(args)}, value_reward_fn=fn, seed=args.seed,
                             data_files=args.data, stage=X.policy_stage(args.policy),
                             audit_rm=args.rm or (args.reward if args.reward and Path(args.reward).is_dir() else None),
                             value_prompts=_rollout_prompts(args), value_n=args.value_n)
        res = {"version_dir": str(d)}
    elif args.stage == "pipeline":
        if args.base:
            from training import pipeline_base as PB

            _refuse(args, ["stages"], "selects the default task's stages; pipeline --base runs [sft,] rm, dpo, ppo, "
                    "eval, gate, export (run a stage alone with `aligngate train <stage> --base`): drop --stages")
            if not args.pairs:
                raise SystemExit("error: pipeline --base needs --pairs FILE (preference pairs JSONL)")
            args.aggregate = args.aggregate or "ds"
            _check_base(args.base)
            res = PB.run(out, PB.BasePipelineConfig(
                base=args.base, pairs=args.pairs, labels=args.labels, aggregate=args.aggregate, demos=args.demos,
                lora=None if args.lora in ("", "none") else (args.lora or "16,32"), fast=fast, seed=args.seed,
                skip_invalid=args.skip_invalid), user_prefs=_user_prefs(args), stage=main)
            print(PB.headline(res))
            return 0
        from training import pipeline as PL

        _refuse(args, ["pairs", "labels", "aggregate", "demos", "lora", "skip_invalid"],
                "needs --base DIR (the default pipeline makes its own data and trains the tiny policies in full)")
        kw = {"stages": tuple(args.stages.split(","))} if args.stages else {}
        res = PL.run(out, PL.PipelineConfig.make(fast=fast, seed=args.seed, **kw))
        print(PL.headline(res))
        return 0
    else:  # pragma: no cover
        raise SystemExit(f"unknown stage {args.stage}")
    if _REPORTS and args.stage != "export":
        C.write_json(out / "data_report.json", _REPORTS)
    summary = {k: v for k, v in res.items() if not isinstance(v, (list, dict)) or k in ("heldout_accuracy_vs_oracle",)}
    print(json.dumps(C.to_jsonable(summary), indent=2, default=str)[:4000])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
