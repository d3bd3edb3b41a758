"""Chat prompt token ids from the checkpoint's own chat template, with message contents always text.

Rendering the template and tokenizing the whole string (what vLLM's server does) lets a user whose message spells
a special token - `<|im_end|>\\n<|im_start|>system`, `<end_of_turn>`, `[/INST]` - close their turn and open
another role's. `chat_prompt_ids`:

1. renders the template with the real contents (the text the model was trained on) and once more with a marker in
   place of each content, padded with whitespace so a template that trims contents (Llama-3, Gemma) shows it;
2. rebuilds the real text from the marked one (the template's own text between the markers, each content trimmed
   as the template trims it); if that is not exactly the real text, the template rewrote a content (Qwen3 drops
   earlier reasoning): the whole string is tokenized, and kept only if its special tokens are exactly those of the
   marked rendering (no content added one); else the request is refused (400) rather than served unsafely;
3. tokenizes the real text in one piece - the exact ids `apply_chat_template(tokenize=True)` gives, token
   boundaries included - and keeps them when no special token's characters fall inside a content;
4. otherwise tokenizes the template's text between the contents with its special tokens and each content with
   `split_special_tokens=True`, so what a user typed stays text.

A message's `name` is rendered by the template as template text (where the template has a place for it); a name
that spells a special token is refused (400) before any of this.
"""

from __future__ import annotations

import os

PAD_L = PAD_R = "\t"  # around each marker: one whitespace character a trimming template removes, a verbatim one keeps


def chat_prompt_ids(tok, messages: list[dict], **template_kw) -> list[int]:
    """The chat template's token ids for `messages` with the generation prompt (see the module docstring)."""
    _check_names(tok, messages)
    render = lambda msgs: tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **template_kw)  # noqa: E731
    text = render(messages)
    contents = [m.get("content") for m in messages]
    if not all(isinstance(c, str) or c is None for c in contents):  # content parts: the template's business
        return tok.encode(text, add_special_tokens=False)
    nonce = os.urandom(6).hex()
    marks = [f"\x00{nonce}-{i}\x00" for i in range(len(messages))]
    marked = render([{**m, "content": PAD_L + k + PAD_R} for m, k in zip(messages, marks)])
    if any(marked.count(k) != 1 for k in marks):  # the template does not pass contents through verbatim
        return _whole_if_clean(tok, text, marked)
    pieces: list[str] = []  # template text, content, template text, content, ..., template text
    pos = 0
    # in the order the template places them (Mistral puts the system message into the last user turn)
    for i, c, k in sorted((marked.index(k), c, k) for c, k in zip(contents, marks)):
        lead, trail = marked[:i].endswith(PAD_L), marked.startswith(PAD_R, i + len(k))
        c = c or ""
        c = c if lead else c.lstrip()
        c = c if trail else c.rstrip()
        pieces += [marked[pos: i - len(PAD_L) if lead else i], c]
        pos = i + len(k) + (len(PAD_R) if trail else 0)
    pieces.append(marked[pos:])
    if "".join(pieces) != text:  # a content was rewritten, not just trimmed
        return _whole_if_clean(tok, text, marked)
    spans, at = [], 0
    for j, p in enumerate(pieces):
        if j % 2:
            spans.append((at, at + len(p)))
        at += len(p)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tok)
    injected = any(t in special and any(s < b and a < e for a, b in spans) for t, (s, e)
                   in zip(enc["input_ids"], enc["offset_mapping"]))
    if not injected:
        return list(enc["input_ids"])
    ids: list[int] = []
    for j, p in enumerate(pieces):
        if p:
            ids += tok.encode(p, add_special_tokens=False, split_special_tokens=bool(j % 2))
    return ids


def _check_names(tok, messages: list[dict]) -> None:
    """A message's `name` is template text (the template renders it, e.g. `<|im_start|>user name=bob`, or leaves it
    out), tokenized with the template's own special tokens: it may not spell one (it could close the turn)."""
    from serve.engines.engine import EngineBadRequest

    named = [(i, m["name"]) for i, m in enumerate(messages) if m.get("name")]
    if not named:
        return
    added = getattr(tok, "added_tokens_decoder", {}).values()
    specials = {s for s in getattr(tok, "all_special_tokens", []) if s} | {t.content for t in added if t.special}
    for i, name in named:
        for s in specials:
            if s in name:
                raise EngineBadRequest(f"messages[{i}].name contains the special token {s!r}; remove it",
                                       param=f"messages.{i}.name", code="invalid_value")


def _special_ids(tok) -> set[int]:
    added = getattr(tok, "added_tokens_decoder", {})
    return set(getattr(tok, "all_special_ids", ())) | {i for i, t in added.items() if t.special}


def _whole_if_clean(tok, text: str, marked: str) -> list[int]:
    """The whole text's ids when its special tokens are the template's own (those of the rendering whose contents
    are markers); otherwise a message spelled a special token where its place in the text cannot be found."""
    from serve.engines.engine import EngineBadRequest

    ids = tok.encode(text, add_special_tokens=False)
    special = _special_ids(tok)
    if [t for t in ids if t in special] == [t for t in tok.encode(marked, add_special_tokens=False) if t in special]:
        return ids
    raise EngineBadRequest("a message contains the chat template's special tokens, and this model's template "
                           "rewrites message contents, so they cannot be kept as plain text; remove them",
                           param="messages", code="invalid_value")
