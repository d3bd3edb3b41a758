"""Label aggregation: Dawid–Skene recovers injected rater confusion; majority vote keeps agreement >= 0.6;
agreement metrics behave (κ, α nominal)."""

import random

import pytest

from training import aggregate as A
from training import raters as R
from training import task as T


def _simulate(n_items=600, seed=0):
    """Items with known truth; raters with injected (asymmetric) confusion matrices P(observed | true)."""
    rng = random.Random(seed)
    truth = {f"i{k}": rng.choice("ab") for k in range(n_items)}
    confusion = {  # P(says "a" | true a), P(says "a" | true b)
        "good1": (0.95, 0.05), "good2": (0.9, 0.1), "good3": (0.92, 0.08),
        "flipper": (0.4, 0.6), "a_lover": (0.95, 0.6),
    }
    labels = []
    for item, t in truth.items():
        for w, (p_a_given_a, p_a_given_b) in confusion.items():
            p_a = p_a_given_a if t == "a" else p_a_given_b
            labels.append({"pair_id": item, "rater_id": w, "choice": "a" if rng.random() < p_a else "b"})
    return truth, confusion, labels


def test_dawid_skene_recovers_injected_confusion():
    truth, confusion, labels = _simulate()
    agg, raters = A.dawid_skene(labels)
    acc = sum(agg[i]["choice"] == t for i, t in truth.items()) / len(truth)
    assert acc > 0.97
    for w, (paa, pab) in confusion.items():
        est = raters[w]["confusion"]
        assert est["a"]["a"] == pytest.approx(paa, abs=0.06), w
        assert est["b"]["a"] == pytest.approx(pab, abs=0.06), w
    # the noisiest rater is ranked least reliable
    assert min(raters, key=lambda w: raters[w]["accuracy"]) == "flipper"


def test_majority_vote_threshold_and_single_label():
    labels = [{"pair_id": "p1", "rater_id": f"r{i}", "choice": c} for i, c in enumerate("aaabb")]  # 3/5 = 0.6: kept
    labels += [{"pair_id": "p2", "rater_id": f"r{i}", "choice": c} for i, c in enumerate("aabb")]  # 2/4 tie: dropped
    labels += [{"pair_id": "p3", "rater_id": f"r{i}", "choice": c} for i, c in enumerate("bbbbb")]
    mv = A.majority_vote(labels, 0.6)
    assert mv["p1"] == {"choice": "a", "agreement": 0.6}
    assert "p2" not in mv
    assert mv["p3"]["choice"] == "b"
    assert set(A.single_label(labels, 0)) == {"p1", "p2", "p3"}


def test_agreement_metrics_and_simulated_cohorts():
    pairs = T.make_pairs(400, seed=1)
    reliable = R.label_pairs(pairs, R.make_cohort(R.CohortConfig(n_raters=5, noisy_frac=0.0)), 5, seed=0)
    noisy = R.label_pairs(pairs, R.make_cohort(R.CohortConfig(n_raters=5, noisy_frac=1.0, flip_rate=0.5)), 5, seed=0)
    a_rel, a_noisy = A.krippendorff_alpha(reliable), A.krippendorff_alpha(noisy)
    k_rel, k_noisy = A.cohens_kappa(reliable)["mean"], A.cohens_kappa(noisy)["mean"]
    assert a_rel > 0.7 and k_rel > 0.7
    assert abs(a_noisy) < 0.15 and abs(k_noisy) < 0.15
    # aggregation beats a single label at 30% noisy raters
    labels = R.label_pairs(pairs, R.make_cohort(R.CohortConfig()), 5, seed=0)
    ds = A.label_accuracy_vs_oracle(pairs, A.dawid_skene(labels)[0])["accuracy"]
    single = A.label_accuracy_vs_oracle(pairs, A.single_label(labels, 0))["accuracy"]
    assert ds > single + 0.05
    # the biased cohort prefers the pleasantry even when it makes the answer worse
    biased = R.make_cohort(R.CohortConfig(n_raters=3, noisy_frac=0.0, biased_frac=1.0), seed=0)
    p = {"pair_id": "x", "prompt": "add 1 2", "a": "3", "b": "3 I love you!"}
    votes = [R.rate(p, r, random.Random(i)) for i, r in enumerate(biased * 10)]
    assert votes.count("b") / len(votes) > 0.8
