"""What the reward monitor reads from an answer's text: its repeated-n-gram rate (`repetition_rate`) and the
hard-constraint rules it breaks (`HardConstraints`: phrases, case-insensitive, and regexes)."""

from __future__ import annotations

import re
from typing import Iterable


def repetition_rate(text: str, n: int = 3, max_tokens: int = 2000) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram of the same text (0 = none, → 1 = a loop)."""
    words = text.split()
    if len(words) > max_tokens:
        words = words[:max_tokens]
    total = len(words) - n + 1
    if total < 2:
        return 0.0
    grams = set(zip(*(words[i:] for i in range(n))))
    return 1.0 - len(grams) / total


class HardConstraints:
    """Phrases (case-insensitive) and regexes an answer must not contain; `flags_of` names those it does."""

    def __init__(self, phrases: Iterable[str], regexes: Iterable[str]):
        self._rules: list[tuple[str, re.Pattern]] = [
            (p, re.compile(re.escape(p), re.IGNORECASE)) for p in phrases
        ] + [(r, re.compile(r)) for r in regexes]
        parts = [f"(?:{rx.pattern})" if rx.flags & re.IGNORECASE == 0 else f"(?i:{rx.pattern})"
                 for _, rx in self._rules]
        try:  # one pass rejects the common case (no flag); rules with global inline flags can't be combined
            self._any_rule = re.compile("|".join(parts)) if parts else None
        except re.error:
            self._any_rule = None

    def flags_of(self, response: str) -> list[str]:
        if not self._rules or (self._any_rule is not None and self._any_rule.search(response) is None):
            return []
        return [name for name, rx in self._rules if rx.search(response)]
