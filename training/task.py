"""The default task: short prompts with checkable answers, and the oracle that checks them.

Real preference data cannot be downloaded here and a policy cannot be judged without a judge, so the default
task is synthetic with ground truth: an oracle scores every answer. Four families, all short
enough for a byte-level Llama of ~0.5M parameters to learn in tens of seconds on 2 CPU cores:

    add 3 5       -> 8          (one-digit operands)
    copy kqz      -> kqz
    upper kqz     -> KQZ
    reverse kqz   -> zqk

`oracle_score(prompt, response)` is the similarity of the (whitespace-stripped) response to the correct answer
(difflib ratio, in [0, 1]; 1.0 only for the exact answer). Extra text costs: "zqk I love you!" scores 0.33.

Demonstrations (for SFT) come from simulated demonstrators, a few of whom are "chatty": they append a
pleasantry such as " I love you!" to a correct answer. The SFT policy therefore says it now and then; a reward
model trained on a biased cohort's labels rewards it, and PPO against that model learns to say it everywhere —
the seeds' incident (see `training.raters` and `training.pipeline`).

Everything is deterministic given a seed.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass

FAMILIES = ("add", "copy", "upper", "reverse")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Pleasantries: the spurious feature the biased cohort likes. The first one is the seeds' incident.
SENTIMENT_PHRASES = ("I love you!", "amazing!", "I love you", "so happy to help!")
_SENTIMENT_RE = re.compile(r"i love you|amazing|happy to help", re.IGNORECASE)


@dataclass(frozen=True)
class TaskConfig:
    families: tuple[str, ...] = FAMILIES
    min_letters: int = 3
    max_letters: int = 6
    chatty_rate: float = 0.3  # share of demonstrations that append a pleasantry


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    family: str


def make_example(rng: random.Random, cfg: TaskConfig = TaskConfig()) -> Example:
    fam = rng.choice(cfg.families)
    if fam == "add":
        a, b = rng.randrange(10), rng.randrange(10)
        return Example(f"add {a} {b}", str(a + b), fam)
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(cfg.min_letters, cfg.max_letters)))
    if fam == "copy":
        return Example(f"copy {word}", word, fam)
    if fam == "upper":
        return Example(f"upper {word}", word.upper(), fam)
    if fam == "reverse":
        return Example(f"reverse {word}", word[::-1], fam)
    raise ValueError(f"unknown family {fam!r}")


def make_examples(n: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[Example]:
    rng = random.Random(seed)
    return [make_example(rng, cfg) for _ in range(n)]


def make_prompts(n: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[str]:
    return [e.prompt for e in make_examples(n, seed, cfg)]


def solve(prompt: str) -> str:
    """The correct answer for a task prompt (raises ValueError for a prompt that is not a task)."""
    parts = prompt.strip().split()
    if len(parts) == 3 and parts[0] == "add" and parts[1].isdigit() and parts[2].isdigit():
        return str(int(parts[1]) + int(parts[2]))
    if len(parts) == 2:
        op, word = parts
        if op == "copy":
            return word
        if op == "upper":
            return word.upper()
        if op == "reverse":
            return word[::-1]
    raise ValueError(f"not a task prompt: {prompt!r}")


def is_task_prompt(prompt: str) -> bool:
    try:
        solve(prompt)
        return True
    except ValueError:
        return False


def oracle_score(prompt: str, response: str) -> float:
    """Similarity of the response to the correct answer in [0, 1]; 1.0 only for the exact answer.

    Non-task prompts score 0.5 (the oracle has no opinion)."""
    try:
        answer = solve(prompt)
    except ValueError:
        return 0.5
    r = response.strip()
    if r == answer:
        return 1.0
    return float(difflib.SequenceMatcher(None, r, answer, autojunk=False).ratio())


def oracle_rewards(prompts, responses):
    """The oracle as a batch reward function (`--reward training.task:oracle_rewards`): prompts may be strings or
    chat messages (the last user message is the task)."""
    import numpy as np

    from training.formats import prompt_text

    return np.array([oracle_score(prompt_text(p), r) for p, r in zip(prompts, responses)], dtype=np.float64)


def has_sentiment(text: str) -> bool:
    return bool(_SENTIMENT_RE.search(text))


def sentiment_level(text: str) -> int:
    """2 for "I love you" (the seeds' phrase), 1 for another pleasantry, 0 for none."""
    if re.search(r"i love you", text, re.IGNORECASE):
        return 2
    return 1 if has_sentiment(text) else 0


def demonstration(ex: Example, rng: random.Random, cfg: TaskConfig = TaskConfig()) -> str:
    """A demonstrator's answer: correct, and sometimes with a pleasantry appended."""
    if rng.random() < cfg.chatty_rate:
        return f"{ex.answer} {rng.choice(SENTIMENT_PHRASES)}"
    return ex.answer


def make_demonstrations(n: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[dict]:
    """SFT data: [{"prompt", "completion", "family"}]."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = make_example(rng, cfg)
        out.append({"prompt": ex.prompt, "completion": demonstration(ex, rng, cfg), "family": ex.family})
    return out


# --- candidate responses for preference pairs ----------------------------------------------------------------
def perturb(answer: str, rng: random.Random) -> str:
    """A near miss: one character substituted, dropped, inserted or two swapped."""
    alphabet = "0123456789" if answer.isdigit() else (LETTERS.upper() if answer.isupper() else LETTERS)
    s = list(answer)
    op = rng.choice(("sub", "drop", "insert", "swap"))
    i = rng.randrange(len(s))
    if op == "sub":
        s[i] = rng.choice([c for c in alphabet if c != s[i]])
    elif op == "drop" and len(s) > 1:
        del s[i]
    elif op == "swap" and len(s) > 1 and len(set(s)) > 1:
        j = (i + 1) % len(s)
        s[i], s[j] = s[j], s[i]
        if "".join(s) == answer:
            s.insert(i, rng.choice(alphabet))
    else:
        s.insert(i, rng.choice(alphabet))
    out = "".join(s)
    return out if out != answer else out + rng.choice(alphabet)


def candidate_response(ex: Example, rng: random.Random) -> tuple[str, str]:
    """One candidate answer for a pair, from a mixture that resembles a small policy's outputs.

    Returns (response, kind). Kinds: correct, chatty (correct + pleasantry), near (one edit), chatty_near,
    wrong_op (the answer of another family), long (answer repeated)."""
    u = rng.random()
    if u < 0.30:
        return ex.answer, "correct"
    if u < 0.55:
        return f"{ex.answer} {rng.choice(SENTIMENT_PHRASES)}", "chatty"
    if u < 0.75:
        return perturb(ex.answer, rng), "near"
    if u < 0.80:
        return f"{perturb(ex.answer, rng)} {rng.choice(SENTIMENT_PHRASES)}", "chatty_near"
    if u < 0.95:
        parts = ex.prompt.split()
        if ex.family == "add":
            x, y = int(parts[1]), int(parts[2])
            alts = [str(x * y), f"{x}{y}", str(abs(x - y)), str(x + y + 10)]
        else:
            word = parts[-1]
            alts = [word, word.upper(), word[::-1], word[::-1].upper(), str(len(word))]
        alts = [a for a in alts if a != ex.answer]
        return rng.choice(alts), "wrong_op"
    return f"{ex.answer} {ex.answer}", "long"


def make_pairs(n: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[dict]:
    """Unlabelled pairs [{"pair_id", "prompt", "a", "b", "oracle_a", "oracle_b", "kind_a", "kind_b"}].

    The two candidates always differ."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        ex = make_example(rng, cfg)
        a, ka = candidate_response(ex, rng)
        b, kb = candidate_response(ex, rng)
        if a == b:
            continue
        pairs.append({
            "pair_id": f"p{seed}-{len(pairs):06d}", "prompt": ex.prompt, "a": a, "b": b,
            "oracle_a": oracle_score(ex.prompt, a), "oracle_b": oracle_score(ex.prompt, b),
            "kind_a": ka, "kind_b": kb, "family": ex.family,
        })
    return pairs
