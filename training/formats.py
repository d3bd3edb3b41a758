"""User data files: JSONL in trl's dataset formats, validated row by row.

    kind "sft"     prompt/completion  {"prompt": str, "completion": str}
                                      {"prompt": [messages], "completion": [messages]}   (conversational)
                   language modeling  {"messages": [messages]}                          (conversational)
    kind "pairs"   preference         {"prompt": str, "chosen": str, "rejected": str}
                                      {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
                                      {"chosen": [messages], "rejected": [messages]}     (implicit prompt)
                   unlabelled pairs   {"pair_id": str, "prompt": str, "a": str, "b": str}  (+ a labels file)
    kind "labels"  rater labels       {"pair_id": str, "rater_id": str, "choice": "a"|"b"}  (one row per rater per pair)
    kind "prompts" prompts only       {"prompt": str | [messages]}  (PPO rollouts, evaluation)

A message is {"role": "system"|"user"|"assistant"|"tool", "content": str}. Extra keys in a row are kept (trl
ignores them). Every row of a file must have the same format. A malformed row is a `DataError` naming the file,
the line and what is wrong; nothing is dropped silently: `skip_invalid=True` skips bad rows and the returned
`Loaded.skipped` lists each one (file, line, reason), which the stages print and record in metrics.json.

Plain rows are turned into conversational ones (`to_conversational`) before training on a base that has a chat
template, so the base's own template is applied by trl — the same template vLLM serves with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

ROLES = ("system", "user", "assistant", "tool")
Kind = Literal["sft", "pairs", "labels", "prompts"]


class DataError(ValueError):
    """A malformed data file: `path:line: what is wrong`."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.reason = str(path), line, message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)} (got {v!r})")
        return v


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class PromptCompletion(_Row):
    prompt: str
    completion: str


class ConvPromptCompletion(_Row):
    prompt: list[Message]
    completion: list[Message]


class ConvMessages(_Row):
    messages: list[Message]


class Preference(_Row):
    prompt: str
    chosen: str
    rejected: str


class ConvPreference(_Row):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


class ConvPreferenceImplicit(_Row):
    chosen: list[Message]
    rejected: list[Message]


class UnlabelledPair(_Row):
    pair_id: str
    prompt: str
    a: str
    b: str


class RaterLabel(_Row):
    pair_id: str
    rater_id: str
    choice: Literal["a", "b"]


class Prompt(_Row):
    prompt: str


class ConvPrompt(_Row):
    prompt: list[Message]


# format name -> (model, keys that identify it); the first whose keys a row has is the row's format
FORMATS: dict[str, list[tuple[str, type[_Row], tuple[str, ...]]]] = {
    "sft": [("prompt_completion", PromptCompletion, ("prompt", "completion")),
            ("conversational_prompt_completion", ConvPromptCompletion, ("prompt", "completion")),
            ("conversational_messages", ConvMessages, ("messages",))],
    "pairs": [("preference", Preference, ("prompt", "chosen", "rejected")),
              ("conversational_preference", ConvPreference, ("prompt", "chosen", "rejected")),
              ("conversational_preference_implicit_prompt", ConvPreferenceImplicit, ("chosen", "rejected")),
              ("unlabelled_pairs", UnlabelledPair, ("pair_id", "prompt", "a", "b"))],
    "labels": [("rater_labels", RaterLabel, ("pair_id", "rater_id", "choice"))],
    "prompts": [("prompt", Prompt, ("prompt",)), ("conversational_prompt", ConvPrompt, ("prompt",))],
}
EXPECTED = {
    "sft": '{"prompt", "completion"} (strings, or lists of {"role", "content"} messages) or {"messages": [...]}',
    "pairs": '{"prompt", "chosen", "rejected"} (strings, or lists of messages), {"chosen", "rejected"} '
             '(conversations), or {"pair_id", "prompt", "a", "b"} with a labels file',
    "labels": '{"pair_id", "rater_id", "choice": "a" or "b"}',
    "prompts": '{"prompt": string or list of messages}',
}


@dataclass
class Loaded:
    rows: list[dict[str, Any]]
    format: str
    path: str
    skipped: list[dict] = field(default_factory=list)  # {"line", "reason"} for rows skipped with skip_invalid

    @property
    def conversational(self) -> bool:
        return self.format.startswith("conversational")

    def report(self) -> dict:
        return {"path": self.path, "format": self.format, "rows": len(self.rows), "skipped": len(self.skipped),
                "skipped_rows": self.skipped[:50]}


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "missing"
        elif err["type"] in ("string_type", "list_type", "model_type", "dict_type"):
            msg = f"{msg} (got {type(err.get('input')).__name__})"
        parts.append(f"field {loc!r}: {msg}" if loc else msg)
    return "; ".join(parts[:4])


def _check_row(row: Any, kind: str, fmt: str | None) -> tuple[str, dict]:
    """(format, validated row) or raise ValueError(reason)."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}; expected {EXPECTED[kind]}")
    cands = [c for c in FORMATS[kind] if all(k in row for k in c[2])]
    if fmt is not None:
        cands = [c for c in FORMATS[kind] if c[0] == fmt]
    if not cands:
        missing = min((tuple(k for k in keys if k not in row) for _, _, keys in FORMATS[kind]), key=len)
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))}: expected {EXPECTED[kind]}; "
                         f"got keys {sorted(row)}")
    errs = []
    for name, model, _ in cands:
        try:
            v = model.model_validate(row)
        except ValidationError as e:
            errs.append((name, _explain(e)))
            continue
        out = v.model_dump()
        for key in ("messages", "prompt", "chosen", "rejected", "completion"):
            if isinstance(out.get(key), list) and not out[key]:
                raise ValueError(f"field {key!r}: an empty list of messages")
        for key in ("chosen", "rejected", "completion"):
            if isinstance(out.get(key), str) and not out[key].strip():
                raise ValueError(f"field {key!r}: empty text")
        if name == "conversational_messages" and not any(m["role"] == "assistant" for m in out["messages"]):
            raise ValueError("field 'messages': no assistant message to train on")
        if name == "conversational_preference_implicit_prompt":
            out = _split_implicit_prompt(out)
        return name, out
    if fmt is not None:
        raise ValueError(f"{errs[0][1]} (the file's first row is in format {fmt!r}: every row must be)")
    if len(errs) == 1:
        raise ValueError(errs[0][1])
    name, msg = min(errs, key=lambda e: len(e[1]))
    raise ValueError(f"{msg} (read as {name}; expected {EXPECTED[kind]})")


def _split_implicit_prompt(row: dict) -> dict:
    """{"chosen": conv, "rejected": conv} sharing a prefix -> explicit prompt (what trl's extract_prompt does)."""
    c, r = row["chosen"], row["rejected"]
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    if n == 0:
        raise ValueError("implicit-prompt pair: 'chosen' and 'rejected' share no leading messages (the prompt)")
    return {**row, "prompt": c[:n], "chosen": c[n:], "rejected": r[n:]}


def load(path: str | Path, kind: Kind, *, skip_invalid: bool = False) -> Loaded:
    """Read and validate a JSONL file of the given kind. Raises DataError on the first bad row (or, with
    skip_invalid, skips bad rows and lists them in `.skipped`; an empty result is still an error)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, None, "no such file")
    rows: list[dict] = []
    skipped: list[dict] = []
    fmt: str | None = None
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not valid JSON ({e.msg} at character {e.pos})") from None
                name, row = _check_row(obj, kind, fmt)
            except ValueError as e:
                if not skip_invalid:
                    raise DataError(p, i, str(e)) from None
                skipped.append({"line": i, "reason": str(e)})
                continue
            fmt = fmt or name
            rows.append({**row, "_line": i})
    if not rows:
        raise DataError(p, None, f"no valid rows (expected {EXPECTED[kind]})"
                        + (f"; {len(skipped)} skipped, first: line {skipped[0]['line']}: {skipped[0]['reason']}"
                           if skipped else ""))
    return Loaded(rows, fmt or "", str(p), skipped)


def check_pair_ids(pairs: Loaded, labels: Loaded) -> None:
    """Every label names a known pair; pair ids are unique."""
    seen: dict[str, int] = {}
    for r in pairs.rows:
        if r["pair_id"] in seen:
            raise DataError(pairs.path, r["_line"], f"duplicate pair_id {r['pair_id']!r} (first on line {seen[r['pair_id']]})")
        seen[r["pair_id"]] = r["_line"]
    for r in labels.rows:
        if r["pair_id"] not in seen:
            raise DataError(labels.path, r["_line"], f"pair_id {r['pair_id']!r} is not in {pairs.path}")


def strip_meta(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_line"} for r in rows]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def to_conversational(row: dict) -> dict:
    """A plain trl row (prompt/completion, preference, prompt) as its conversational equivalent."""
    out = {k: v for k, v in row.items() if k != "_line"}
    if isinstance(out.get("prompt"), str):
        out["prompt"] = user(out["prompt"])
    for k in ("completion", "chosen", "rejected"):
        if isinstance(out.get(k), str):
            out[k] = assistant(out[k])
    return out


def prompt_text(prompt: str | list[dict]) -> str:
    """The last user message of a prompt (plain prompts are returned as they are): what the default task's oracle
    and the byte-level default policy see."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def response_text(resp: str | list[dict]) -> str:
    if isinstance(resp, str):
        return resp
    return "".join(m["content"] for m in resp if m["role"] == "assistant")
