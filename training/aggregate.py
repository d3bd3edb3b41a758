"""Label aggregation and agreement: majority vote (kept where agreement >= 0.6), Dawid–Skene, Cohen's κ,
Krippendorff's α (nominal).

Libraries where they fit: crowd-kit's `DawidSkene` (EM over per-rater confusion matrices), scikit-learn's
`cohen_kappa_score`, and `krippendorff.alpha(level_of_measurement="nominal")` (its default is interval — wrong
for A/B choices). Majority vote with an agreement threshold is four lines, so it is written here: crowd-kit's
`MajorityVote` has no "drop low-agreement items" option.

Input everywhere: raw labels [{"pair_id", "rater_id", "choice" in {"a","b"}}].
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict

import numpy as np


def by_pair(labels: list[dict]) -> dict[str, list[tuple[str, str]]]:
    d: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in labels:
        d[r["pair_id"]].append((r["rater_id"], r["choice"]))
    return d


def majority_vote(labels: list[dict], min_agreement: float = 0.6) -> dict[str, dict]:
    """{pair_id: {"choice", "agreement"}} for pairs whose winning share is >= min_agreement (3 of 5 = 0.6)."""
    out = {}
    for pid, votes in by_pair(labels).items():
        c = Counter(ch for _, ch in votes)
        choice, n = c.most_common(1)[0]
        agreement = n / len(votes)
        if agreement >= min_agreement and (len(c) == 1 or c["a"] != c["b"]):
            out[pid] = {"choice": choice, "agreement": agreement}
    return out


def single_label(labels: list[dict], seed: int = 0) -> dict[str, dict]:
    """No aggregation: one rater's label per pair, chosen at random (what single annotation would give)."""
    rng = random.Random(seed)
    return {pid: {"choice": rng.choice(votes)[1], "agreement": None} for pid, votes in sorted(by_pair(labels).items())}


def dawid_skene(labels: list[dict], n_iter: int = 100, min_posterior: float = 0.0) -> tuple[dict[str, dict], dict]:
    """Dawid–Skene (crowd-kit). Returns ({pair_id: {"choice", "posterior"}}, {rater_id: {"accuracy", "confusion"}}).

    confusion[true][observed] = P(rater says `observed` | truth is `true`)."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    df = pd.DataFrame({"task": [r["pair_id"] for r in labels], "worker": [r["rater_id"] for r in labels],
                       "label": [r["choice"] for r in labels]})
    ds = DawidSkene(n_iter=n_iter)
    ds.fit(df)
    probas = ds.probas_
    agg = {}
    for pid, row in probas.iterrows():
        choice = row.idxmax()
        post = float(row.max())
        if post >= min_posterior:
            agg[str(pid)] = {"choice": str(choice), "posterior": post}
    raters = {}
    errors = ds.errors_  # index (worker, observed label), columns = true label
    classes = sorted(df["label"].unique())
    for w in sorted(df["worker"].unique()):
        conf = {t: {o: float(errors.loc[(w, o), t]) if (w, o) in errors.index else 0.0 for o in classes} for t in classes}
        prior = ds.priors_
        acc = float(sum(prior.get(t, 0.0) * conf[t][t] for t in classes))
        raters[str(w)] = {"accuracy": acc, "confusion": conf}
    return agg, raters


def cohens_kappa(labels: list[dict], min_shared: int = 20) -> dict:
    """Mean pairwise Cohen's κ over rater pairs that share at least `min_shared` items."""
    from sklearn.metrics import cohen_kappa_score

    per_rater: dict[str, dict[str, str]] = defaultdict(dict)
    for r in labels:
        per_rater[r["rater_id"]][r["pair_id"]] = r["choice"]
    kappas = []
    for r1, r2 in itertools.combinations(sorted(per_rater), 2):
        shared = sorted(set(per_rater[r1]) & set(per_rater[r2]))
        if len(shared) < min_shared:
            continue
        y1 = [per_rater[r1][p] for p in shared]
        y2 = [per_rater[r2][p] for p in shared]
        if len(set(y1) | set(y2)) < 2:
            continue
        kappas.append(float(cohen_kappa_score(y1, y2)))
    return {"mean": float(np.mean(kappas)) if kappas else None, "n_rater_pairs": len(kappas)}


def krippendorff_alpha(labels: list[dict]) -> float | None:
    """Krippendorff's α, nominal level (raters x items matrix with missing entries)."""
    import krippendorff

    raters = sorted({r["rater_id"] for r in labels})
    items = sorted({r["pair_id"] for r in labels})
    if len(raters) < 2 or len(items) < 2:
        return None
    ri = {r: i for i, r in enumerate(raters)}
    ii = {p: i for i, p in enumerate(items)}
    m = np.full((len(raters), len(items)), np.nan)
    for r in labels:
        m[ri[r["rater_id"]], ii[r["pair_id"]]] = 0.0 if r["choice"] == "a" else 1.0
    try:
        return float(krippendorff.alpha(reliability_data=m, level_of_measurement="nominal"))
    except ValueError:
        return None


def agreement_report(labels: list[dict]) -> dict:
    return {"cohens_kappa": cohens_kappa(labels), "krippendorff_alpha_nominal": krippendorff_alpha(labels),
            "n_labels": len(labels), "n_pairs": len(by_pair(labels)),
            "n_raters": len({r["rater_id"] for r in labels})}


def aggregate(labels: list[dict], method: str = "ds", min_agreement: float = 0.6, seed: int = 0) -> dict[str, dict]:
    """method: "mv" (majority vote, agreement >= min_agreement), "ds" (Dawid–Skene), "single" (no aggregation),
    "all" (every raw label is its own training pair — returned as a list under each pair id)."""
    if method == "mv":
        return majority_vote(labels, min_agreement)
    if method == "ds":
        return dawid_skene(labels)[0]
    if method == "single":
        return single_label(labels, seed)
    if method == "all":
        return {pid: {"choices": [c for _, c in votes]} for pid, votes in by_pair(labels).items()}
    raise ValueError(f"unknown aggregation {method!r}")


def to_trl_pairs(pairs: list[dict], agg: dict[str, dict]) -> list[dict]:
    """Resolved preference pairs [{"prompt", "chosen", "rejected", "pair_id"}] in trl's (plain-text) format."""
    out = []
    for p in pairs:
        a = agg.get(p["pair_id"])
        if a is None:
            continue
        choices = a.get("choices") or [a["choice"]]
        for ch in choices:
            w, l = (p["a"], p["b"]) if ch == "a" else (p["b"], p["a"])
            row = {"pair_id": p["pair_id"], "prompt": p["prompt"], "chosen": w, "rejected": l}
            if "oracle_a" in p:
                row["oracle_chosen"], row["oracle_rejected"] = (
                    (p["oracle_a"], p["oracle_b"]) if ch == "a" else (p["oracle_b"], p["oracle_a"]))
            out.append(row)
    return out


def label_accuracy_vs_oracle(pairs: list[dict], agg: dict[str, dict]) -> dict:
    """Share of aggregated choices that agree with the oracle (pairs the oracle ties are left out)."""
    hit = n = 0
    for p in pairs:
        a = agg.get(p["pair_id"])
        if a is None or "oracle_a" not in p or p["oracle_a"] == p["oracle_b"] or "choice" not in a:
            continue
        truth = "a" if p["oracle_a"] > p["oracle_b"] else "b"
        hit += a["choice"] == truth
        n += 1
    return {"accuracy": hit / n if n else None, "n": n, "kept": len(agg), "of": len(pairs)}
