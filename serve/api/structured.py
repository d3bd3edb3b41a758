"""Structured outputs: the `response_format` of a chat request, checked at the edge, handed to vLLM's backends.

`text` is no constraint; `json_object` is any JSON object; `json_schema` is JSON valid against the given schema.
In process the constraint becomes `SamplingParams.structured_outputs` (vLLM's own conversion from its request
type, in serve.api.tool_calls: its checks are vLLM's); remote versions get the field upstream as the client sent it.

The backend is per version (`VersionSpec.structured_outputs_backend`, default xgrammar) and lays JSON out without
free whitespace (vLLM's engine-wide `disable_any_whitespace`): a weak model allowed blanks between tokens can fill
`max_tokens` with them inside a valid-so-far object and never close it (the embedded default did, at
temperature 0). The JSON means the same; only its layout is fixed. `auto` restores vLLM's own choice (xgrammar,
guidance for schemas xgrammar cannot do) with free whitespace. The grammar guarantees the answer's syntax whatever the model; it does not
guarantee the answer ends before `max_tokens`, so a weak model needs room (or a schema that bounds lengths).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`, as the OpenAI API (and the SDK's `.parse()`) sends it."""

    model_config = ConfigDict(strict=True, populate_by_name=True, extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a-z, A-Z, 0-9, _ and -, at most 64")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema", description="a JSON Schema (required here)")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v):
        if v is None:
            return v
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(v).check_schema(v)
        except SchemaError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise ValueError(f"the schema is not a valid JSON Schema at {where}: {e.message}") from None
        return v


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError('type "json_schema" needs `json_schema` with a `schema` (a JSON Schema object)')
        return self

    def wire(self) -> dict | None:
        """The OpenAI wire form (for vLLM's request type and for remote upstreams); None for `text`."""
        if self.type == "text":
            return None
        return self.model_dump(by_alias=True, exclude_none=True)


def cap_tag_whitespace(params, most: int = 1):
    """The same bound inside a structural tag (vLLM's strict tool calls): the engine-wide whitespace setting does
    not reach the JSON a tag holds, so each of its JSON parts gets xgrammar's `max_whitespace_cnt` (at most `most`
    blanks in a row: `{"city": "Oslo"}` stays possible, a run of blanks does not)."""
    if params is None or params.structural_tag is None:
        return params
    import json
    from dataclasses import replace

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and node.get("max_whitespace_cnt") is None:
                node["max_whitespace_cnt"] = most
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    tag = json.loads(params.structural_tag)
    walk(tag)
    return replace(params, structural_tag=json.dumps(tag))


def control_char_token_ids(tok, whitespace: bool) -> list[int]:
    """Token ids whose text holds a control character JSON never allows raw inside a string (U+0000-U+001F, and
    U+007F for good measure); with `whitespace` False, tab, newline and carriage return are left alone (they are
    JSON whitespace between tokens, and ordinary in the free text around an `auto` tool call).

    xgrammar's JSON grammar lets these into strings (checked: `{"city":"a\x08b"}` and a raw tab are accepted), so
    a weak model sampling freely can return JSON that `json.loads` and the SDK's `.parse()` refuse. The engine
    biases these ids by -100 for constrained requests: not a hard ban, so where the grammar allows nothing else
    (a tool-call tag's own newline) the token still comes, and nothing valid JSON needs is lost."""
    bad = {chr(c) for c in range(32)} | {"\x7f"}
    if not whitespace:
        bad -= set("\t\n\r")
    out = []
    for i in range(len(tok)):
        text = tok.decode([i], skip_special_tokens=False)  # byte-level vocabularies: one id may be a lone byte
        if any(ch in bad for ch in text):
            out.append(i)
    return out


def under_bans(user: dict[int, float], bans: dict[int, float], why: str) -> dict[int, float]:
    """The client's logit_bias with a constrained request's bans applied: a client bias on a banned token that is
    no lower than the ban agrees with it; one above it (lifting a token the constraint bans) is a conflict, refused
    (400 naming the ids) rather than overwritten without a word."""
    from serve.engines.engine import EngineBadRequest

    clash = sorted(t for t, v in user.items() if t in bans and v > bans[t])
    if clash:
        shown = ", ".join(map(str, clash[:20])) + (f" and {len(clash) - 20} more" if len(clash) > 20 else "")
        raise EngineBadRequest(f"logit_bias raises token ids {shown}, which {why} bans (bias {bans[clash[0]]:g}: "
                               "control characters JSON does not allow raw); remove them from logit_bias or give "
                               f"them at most {bans[clash[0]]:g}", param="logit_bias", code="invalid_value")
    return {**user, **bans}
