"""Tool calls out of an in-process engine's text, by vLLM's own parsers (`vllm.parser.ParserManager`).

Per version (`ToolSupport`): the vLLM tool parser named in config (`VersionSpec.tool_parser`) or the default for
its chat template (serve.api.tools.default_parser); `"none"` turns tools off for the version (a 400). Per request
(`ToolRequest`): the parser's `adjust_request` on vLLM's request type gives the constrained decoding vLLM's server
uses - for `tool_choice` required or a named function a structural tag or JSON schema over the call, so even a
random-weight model emits a valid call - and one parser per choice turns the text into `tool_calls`: streamed
(`parse_delta`, OpenAI's tool-call deltas) or whole at the end (`parse`, as vLLM's non-streaming path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve.engines.engine import Delta, EngineBadRequest, GenerationRequest
from serve.logs import get_logger
from serve.api.structured import cap_tag_whitespace
from serve.api.tools import default_parser, renders_tools

log = get_logger(__name__)


@dataclass
class ToolSupport:
    """A version's tool handling, fixed at engine start."""

    parser_name: str | None  # vLLM tool parser; None = tools refused for this version
    native: bool  # the chat template renders `tools` itself (else serve.api.tools' fallback rendering)
    parser_cls: type | None = None
    tokenizer: object = None
    model_config: object = None
    compact: bool = True  # JSON without free whitespace (the version's structured_outputs_backend is not auto)


def tool_support(configured: str | None, hf_tokenizer, vllm_tokenizer, model_config,
                 strict_level: str = "parameter", compact: bool = True) -> ToolSupport:
    """Resolve and load the version's parser; an unknown parser name fails the engine's start with the list."""
    from vllm.parser import ParserManager
    from vllm.tool_parsers import ToolParserManager

    native = renders_tools(hf_tokenizer)
    if configured == "none":
        return ToolSupport(None, native, compact=compact)
    name = configured or default_parser(hf_tokenizer, native)
    known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
    if name not in known:
        raise ValueError(f"tool_parser {name!r} is not one of vLLM's tool parsers: {', '.join(known)}")
    parser_cls = ParserManager.get_parser(tool_parser_name=name, enable_auto_tools=True, tokenizer=vllm_tokenizer,
                                          tool_strict_level=strict_level)
    return ToolSupport(name, native, parser_cls, vllm_tokenizer, model_config, compact)


class ToolRequest:
    """One chat request's constraint (structured outputs from `response_format` or the tool choice) and, when it
    has tools to call, a reader per choice that turns text deltas into content and tool-call deltas."""

    def __init__(self, support: ToolSupport | None, req: GenerationRequest):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        fields: dict = {"model": "-", "messages": [{"role": "user", "content": "-"}]}
        if req.response_format:
            fields["response_format"] = req.response_format
        calls = bool(req.tools) and req.tool_choice != "none"
        if req.tools:
            fields["tools"] = req.tools
            if req.tool_choice is not None:
                fields["tool_choice"] = req.tool_choice
            if req.parallel_tool_calls is not None:
                fields["parallel_tool_calls"] = req.parallel_tool_calls
        if calls and (support is None or support.parser_cls is None):
            raise EngineBadRequest("this version has no tool parser (tool_parser: none in its config); call it "
                                   "without tools or with tool_choice none", param="tools", code="tools_unsupported")
        try:
            self.vreq = ChatCompletionRequest(**fields)
        except Exception as e:  # vLLM's own checks of the tool fields
            raise EngineBadRequest(f"invalid tools or response_format: {e}", param="tools") from None
        self.support = support
        self.stream = req.stream
        self.readers: dict[int, ChoiceReader] = {}
        self.calls = calls
        if calls:
            try:
                self.vreq = self._parser().adjust_request(self.vreq)
            except Exception as e:  # e.g. a tool schema vLLM cannot turn into a grammar
                raise EngineBadRequest(f"the tools cannot be used: {e}", param="tools") from None
        self.named = isinstance(req.tool_choice, dict)
        # the whole answer is JSON (or one forced call): no free text around it
        self.forced = (calls and (self.named or req.tool_choice == "required")) or (
            not calls and bool(req.response_format))

    def _parser(self):
        s = self.support
        return s.parser_cls(s.tokenizer, self.vreq.tools, model_config=s.model_config)

    @property
    def structured_outputs(self):
        so = self.vreq.extract_structured_outputs()
        return cap_tag_whitespace(so) if self.support is not None and self.support.compact else so

    @property
    def skip_special_tokens(self) -> bool:
        return self.vreq.skip_special_tokens

    def feed(self, d: Delta, prompt_ids: list[int]) -> Delta:
        """Rewrite one choice's delta in place: text -> content + tool-call deltas (no-op without tools)."""
        if not self.calls:
            return d
        r = self.readers.get(d.index)
        if r is None:
            r = self.readers[d.index] = ChoiceReader(self._parser(), self.vreq, self.stream, self.named)
        return r.feed(d, prompt_ids)


@dataclass
class ChoiceReader:
    parser: object
    vreq: object
    stream: bool
    named: bool
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    called: bool = False

    def feed(self, d: Delta, prompt_ids: list[int]) -> Delta:
        finished = d.finish_reason is not None
        if self.stream:
            calls = self._stream(d, prompt_ids, finished)
        else:
            self.text.append(d.text)
            self.token_ids += d.token_ids or []
            d.text, calls = ("", None) if not finished else self._whole()
        if self.vreq.parallel_tool_calls is False and calls:  # vLLM's maybe_filter_parallel_tool_calls
            calls = [c for c in calls if c.get("index", 0) == 0]
        if calls:
            self.called = True
            d.tool_calls = calls
        if finished and self.called and d.finish_reason == "stop" and not self.named:
            d.finish_reason = "tool_calls"  # OpenAI: a named function's call ends with "stop"
        return d

    def _stream(self, d: Delta, prompt_ids: list[int], finished: bool) -> list[dict] | None:
        try:
            dm = self.parser.parse_delta(d.text, list(d.token_ids or ()), self.vreq, prompt_ids, finished=finished)
        except Exception as e:  # a parser bug must not kill the stream: the text goes out as content
            log.warning("tool_parser_failed", error=repr(e), mode="stream")
            return None
        d.text = (dm.content or "") if dm is not None else ""
        if dm is None or not dm.tool_calls:
            return None
        return [tc.model_dump(exclude_none=True) for tc in dm.tool_calls]

    def _whole(self) -> tuple[str, list[dict] | None]:
        from vllm.renderers.chat_utils import make_tool_call_id

        text = "".join(self.text)
        try:
            _, content, calls = self.parser.parse(text, self.vreq, enable_auto_tools=True,
                                                  model_output_token_ids=self.token_ids)
        except Exception as e:
            log.warning("tool_parser_failed", error=repr(e), mode="whole")
            return text, None
        out = [{"index": i, "id": c.id or make_tool_call_id(), "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(calls or ())]
        return content or "", out or None
