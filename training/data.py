"""Preference data for the default task: pairs, simulated raters' raw labels, aggregated pairs.

Writes into `out/`:
    pairs_train.jsonl, pairs_test.jsonl     unlabelled pairs (with oracle scores, for checking only): half
                                            synthetic candidates (task.candidate_response), half two samples
                                            of the SFT policy for the same prompt
    labels.jsonl                            raw labels of the main cohort (30% noisy raters by default)
    labels_biased.jsonl                     raw labels of the biased cohort (prefers pleasantries)
    prefs_{ds,mv,single,all,biased}.jsonl   resolved trl pairs {prompt, chosen, rejected}
    metrics.json                            agreement (κ, α), label accuracy vs the oracle per aggregation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training import aggregate as A
from training import common as C
from training import raters as R
from training import task as T


@dataclass
class DataConfig:
    n_pairs: int = 10000
    n_test_pairs: int = 600
    seed: int = 0
    cohort: R.CohortConfig = field(default_factory=R.CohortConfig)
    biased_cohort: R.CohortConfig = field(default_factory=lambda: R.CohortConfig(
        n_raters=5, noisy_frac=0.0, biased_frac=1.0, bias="sentiment", raters_per_pair=3))
    task: T.TaskConfig = field(default_factory=T.TaskConfig)
    policy_frac: float = 0.5  # share of pairs that are two samples of the policy (when a policy is given)


def policy_pairs(policy, n: int, seed: int, cfg: T.TaskConfig = T.TaskConfig(), tag: str = "s") -> list[dict]:
    """Pairs of two temperature-1 samples of `policy` for the same prompt (identical answers dropped) — the
    InstructGPT way: raters compare the model's own outputs."""
    from training import common as C

    pairs: list[dict] = []
    k = 0
    while len(pairs) < n:
        exs = T.make_examples(max(64, 2 * (n - len(pairs))), seed=seed + 1000 * k, cfg=cfg)
        prompts = [e.prompt for e in exs]
        a = C.sample_responses(policy, prompts, seed=seed + 2 * k)
        b = C.sample_responses(policy, prompts, seed=seed + 2 * k + 1)
        for e, x, y in zip(exs, a, b):
            if x != y and len(pairs) < n:
                pairs.append({"pair_id": f"{tag}{seed}-{len(pairs):06d}", "prompt": e.prompt, "a": x, "b": y,
                              "oracle_a": T.oracle_score(e.prompt, x), "oracle_b": T.oracle_score(e.prompt, y),
                              "kind_a": "policy", "kind_b": "policy", "family": e.family})
        k += 1
    return pairs


def build(out_dir: str | Path, cfg: DataConfig = DataConfig(), policy=None) -> dict:
    """Pairs (synthetic candidates, plus the policy's own samples when `policy` is given), raw labels, and the
    aggregated preference sets."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if policy is not None and cfg.policy_frac > 0:
        n_pol, n_pol_test = round(cfg.n_pairs * cfg.policy_frac), round(cfg.n_test_pairs * cfg.policy_frac)
        train = T.make_pairs(cfg.n_pairs - n_pol, seed=cfg.seed + 100, cfg=cfg.task) + \
            policy_pairs(policy, n_pol, seed=cfg.seed + 300, cfg=cfg.task, tag="s")
        test = T.make_pairs(cfg.n_test_pairs - n_pol_test, seed=cfg.seed + 200, cfg=cfg.task) + \
            policy_pairs(policy, n_pol_test, seed=cfg.seed + 400, cfg=cfg.task, tag="t")
    else:
        train = T.make_pairs(cfg.n_pairs, seed=cfg.seed + 100, cfg=cfg.task)
        test = T.make_pairs(cfg.n_test_pairs, seed=cfg.seed + 200, cfg=cfg.task)
    C.write_jsonl(out / "pairs_train.jsonl", train)
    C.write_jsonl(out / "pairs_test.jsonl", test)

    cohort = R.make_cohort(cfg.cohort, seed=cfg.seed)
    labels = R.label_pairs(train, cohort, cfg.cohort.raters_per_pair, seed=cfg.seed + 1)
    C.write_jsonl(out / "labels.jsonl", labels)
    biased = R.make_cohort(cfg.biased_cohort, seed=cfg.seed + 7)
    labels_b = R.label_pairs(train, biased, cfg.biased_cohort.raters_per_pair, seed=cfg.seed + 2)
    C.write_jsonl(out / "labels_biased.jsonl", labels_b)

    metrics: dict = {"stage": "data", "config": cfg, "cohort": [r.__dict__ for r in cohort],
                     "agreement": A.agreement_report(labels), "agreement_biased": A.agreement_report(labels_b),
                     "label_accuracy_vs_oracle": {}}
    ds_agg, ds_raters = A.dawid_skene(labels)
    metrics["dawid_skene_raters"] = {k: {"accuracy": v["accuracy"], "kind": next(r.kind for r in cohort if r.rater_id == k)}
                                     for k, v in ds_raters.items()}
    aggs = {"ds": ds_agg, "mv": A.majority_vote(labels), "single": A.single_label(labels, cfg.seed),
            "all": A.aggregate(labels, "all"), "biased": A.majority_vote(labels_b)}
    for name, agg in aggs.items():
        C.write_jsonl(out / f"prefs_{name}.jsonl", A.to_trl_pairs(train, agg))
        if name != "all":
            metrics["label_accuracy_vs_oracle"][name] = A.label_accuracy_vs_oracle(train, agg)
    C.write_json(out / "metrics.json", metrics)
    return metrics
