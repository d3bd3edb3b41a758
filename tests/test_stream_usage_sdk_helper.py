"""Issue 30 item 3: with `stream_options.include_usage`, the SDK's stream helper
(`client.chat.completions.stream(...)`) keeps `get_final_completion().usage`, and `aligngate.reward` is readable
from the last chunk. The helper takes `usage` from the last chunk it reads (each chunk overwrites its snapshot's
usage): the gateway's reward chunk used to come after the usage chunk and left the final usage None.

A fast test feeds the gateway's own chunk bytes to the SDK's stream state (the helper's accumulator); a slow one
goes through the helper against the default gateway."""

from __future__ import annotations

import json

from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from serve.api import openai_format as fmt
from serve.engines.engine import Delta

REWARD = {"score": 0.5, "source": "value_head", "model_version": "stable", "cached": False}


def _events(data: bytes) -> list[dict]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            out.append(json.loads(block[len("data: "):]))
    assert data.endswith(fmt.DONE)
    return out


def _gateway_stream(include_usage: bool) -> bytes:
    c = fmt.ChatChunker("chatcmpl-1", "stable", 1, {"aligngate": {"version": "stable", "routed_by": "pinned"}})
    body = c.opening() + c.chunk(Delta(0, "1", 1)) + c.chunk(Delta(0, "9", 1, finish_reason="stop"))
    return body + c.tail(7, 2, include_usage, {"aligngate": {"version": "stable", "reward": REWARD}})


def test_sdk_stream_state_keeps_usage_and_the_reward_is_on_the_last_chunk():
    state = ChatCompletionStreamState()
    chunks = [ChatCompletionChunk.model_validate(e)
              for e in _events(_gateway_stream(include_usage=True))]
    for ch in chunks:
        state.handle_chunk(ch)
    final = state.get_final_completion()
    assert final.choices[0].message.content == "19" and final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (7, 2, 9)
    assert chunks[-1].choices == [] and chunks[-1].model_extra["aligngate"]["reward"] == REWARD
    assert sum(ch.usage is not None for ch in chunks) == 1  # one usage chunk, the last before [DONE]


def test_without_include_usage_the_reward_chunk_has_no_usage():
    events = _events(_gateway_stream(include_usage=False))
    assert events[-1]["choices"] == [] and events[-1]["aligngate"]["reward"] == REWARD
    assert all("usage" not in e for e in events)


# --- through the SDK helper, on the default gateway ----------------------------------------------------------
def test_sdk_stream_helper_returns_usage_and_reward(client, default_tokenizer):
    from training.tokenizer import EOS

    eos = default_tokenizer.token_to_id(EOS)
    # exactly two tokens, then EOS: the barely trained default may end at once (an empty answer) or run to
    # max_tokens (the helper raises LengthFinishReasonError on `length`)
    kw = dict(model="stable", messages=[{"role": "user", "content": "12+7="}], max_tokens=8, temperature=0,
              logit_bias={str(eos): 100}, extra_body={"min_tokens": 2})
    with client.chat.completions.stream(**kw, stream_options={"include_usage": True}) as s:
        chunks = [e.chunk for e in s if e.type == "chunk"]
        final = s.get_final_completion()
    plain = client.chat.completions.create(**kw)
    assert final.usage is not None
    assert final.usage.prompt_tokens == plain.usage.prompt_tokens >= 1
    assert final.usage.completion_tokens == plain.usage.completion_tokens >= 1
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert final.choices[0].message.content == plain.choices[0].message.content
    assert final.usage.completion_tokens <= 3 and final.choices[0].finish_reason == "stop"
    assert final.model_extra["aligngate"]["version"] == "stable"  # the first chunk's fields
    reward = chunks[-1].model_extra["aligngate"]["reward"]
    assert reward["source"] == "value_head" and isinstance(reward["score"], float)
    assert chunks[-1].usage == final.usage and chunks[-1].choices == []
