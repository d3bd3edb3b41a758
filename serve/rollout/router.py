"""Which version answers a request.

A request naming a version goes there. A request naming the public model is routed by weight: with a sticky
key (the `user` field, else the `x-session-id` header) the key is hashed to one of 10,000 buckets — the same
bucket on every replica and after restarts — and each version owns a fixed range of buckets; without a key,
a random bucket. Ranges are laid out from bucket 0 in a fixed order with the stable (first) version taking
the remainder at the top, so raising a canary's weight only moves users from stable to the canary, never
back and forth (monotone reassignment).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """Deterministic bucket in [0, BUCKETS) for a sticky key (blake2b: stable across processes, unlike hash())."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class UnknownModel(LookupError):
    pass


@dataclass(frozen=True)
class Route:
    version: str
    sticky: bool


class Router:
    def __init__(self, public_model: str, versions: list[str], weights: dict[str, float]):
        if not versions:
            raise ValueError("at least one version is needed")
        self.public_model = public_model
        self.order = list(versions)  # order[0] is the stable version: it takes the remainder
        self._ranges: list[tuple[int, str]] = []
        self.set_weights(weights)

    @property
    def stable(self) -> str:
        return self.order[0]

    def set_weights(self, weights: dict[str, float]) -> None:
        unknown = set(weights) - set(self.order)
        if unknown:
            raise UnknownModel(f"unknown version(s): {sorted(unknown)}")
        total = sum(max(0.0, weights.get(v, 0.0)) for v in self.order)
        if total <= 0:
            raise ValueError("weights must not all be zero")
        self.weights = {v: max(0.0, weights.get(v, 0.0)) / total for v in self.order}
        # Non-stable versions own [lo, hi) ranges from bucket 0 upward; stable owns everything above. Boundaries
        # are the rounded cumulative weights, so rounding errors do not add up: a stable at weight 0 gets no
        # bucket (hypothesis: with weights 0/39/48/48/59, rounding each width left stable one bucket).
        ranges, cum = [], 0.0
        for v in self.order[1:]:
            cum += self.weights[v]
            ranges.append((min(BUCKETS, round(cum * BUCKETS)), v))
        ranges.append((BUCKETS, self.stable))
        self._ranges = ranges

    def add_version(self, name: str) -> None:
        """A version registered at runtime: appended last with weight 0, so no existing range moves."""
        if name not in self.order:
            self.order.append(name)
            self.set_weights({**self.weights, name: 0.0})

    def remove_version(self, name: str) -> None:
        """Stop routing to `name` (weighted and explicit); its share, if any, goes to the stable version."""
        if name == self.stable:
            raise ValueError(f"{name!r} is the stable version; promote another version first")
        if name in self.order:
            weights = {v: w for v, w in self.weights.items() if v != name}
            self.order.remove(name)
            self.set_weights(weights if sum(weights.values()) > 0 else {self.stable: 1.0})

    def set_stable(self, name: str) -> None:
        """Make `name` the version that takes the remainder. With its weight at 1 (a finished promotion) no
        user moves; the former stable keeps its place among the others."""
        if name not in self.order:
            raise UnknownModel(name)
        self.order.remove(name)
        self.order.insert(0, name)
        self.set_weights(self.weights)

    def version_for_bucket(self, b: int) -> str:
        for hi, v in self._ranges:
            if b < hi:
                return v
        return self.stable

    def route(self, model: str, sticky_key: str | None = None) -> Route:
        if model != self.public_model:
            if model in self.weights:
                return Route(model, False)
            raise UnknownModel(model)
        if sticky_key:
            return Route(self.version_for_bucket(bucket_of(sticky_key)), True)
        return Route(self.version_for_bucket(random.randrange(BUCKETS)), False)
