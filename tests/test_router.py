"""Router: explicit versions, sticky buckets identical across processes, weights, monotone reassignment."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from serve.rollout.router import BUCKETS, Router, UnknownModel, bucket_of


def test_explicit_and_unknown():
    r = Router("aligngate", ["stable", "canary"], {"stable": 1, "canary": 0})
    assert r.route("canary").version == "canary"
    with pytest.raises(UnknownModel):
        r.route("nope")


def test_bucket_is_stable_across_processes():
    keys = ["alice", "bob", "user-42", "ünïcode"]
    here = [bucket_of(k) for k in keys]
    code = f"from serve.rollout.router import bucket_of; print([bucket_of(k) for k in {keys!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    assert all(0 <= b < BUCKETS for b in here)


def test_weighted_split_within_binomial_interval():
    r = Router("aligngate", ["stable", "canary"], {"stable": 0.9, "canary": 0.1})
    n = 20_000
    hits = sum(r.route("aligngate", f"user-{i}").version == "canary" for i in range(n))
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(hits - 0.1 * n) < 2.576 * sd  # 99% interval
    unkeyed = sum(r.route("aligngate").version == "canary" for _ in range(n))
    assert abs(unkeyed - 0.1 * n) < 2.576 * sd


def test_monotone_reassignment():
    users = [f"u{i}" for i in range(5000)]
    r = Router("aligngate", ["stable", "canary"], {"stable": 1, "canary": 0})
    prev = {u: r.route("aligngate", u).version for u in users}
    assert set(prev.values()) == {"stable"}
    for w in (0.01, 0.1, 0.5, 1.0):
        r.set_weights({"stable": 1 - w, "canary": w})
        now = {u: r.route("aligngate", u).version for u in users}
        assert all(not (prev[u] == "canary" and now[u] == "stable") for u in users)  # never back
        prev = now
    assert set(prev.values()) == {"canary"}


def test_zero_weights_rejected():
    with pytest.raises(ValueError):
        Router("aligngate", ["stable"], {"stable": 0})
