"""Tool-call formats, grammars and the streamed-call parser, without a server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from appliance.engines.llamacpp.native import NativeModel
from appliance.engines.llamacpp.tools.formats import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolFormat,
    detect_format,
)
from appliance.engines.llamacpp.tools.grammar import arguments_grammar, tool_grammar
from appliance.engines.llamacpp.tools.stream import (
    ArgumentsDelta,
    CallStart,
    ContentDelta,
    Delta,
    ToolCallStream,
)
from appliance.errors import InvalidRequestError

NAMES = ("get_weather", "add")
CALLS = [("get_weather", '{"city": "Paris"}'), ("add", '{"a": 1, "b": 2}')]


def _tool(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": schema or {"type": "object"}}}


def _replay(fmt: ToolFormat, text: str, step: int) -> list[Delta]:
    stream = ToolCallStream(fmt, NAMES)
    deltas: list[Delta] = []
    for at in range(0, len(text), step):
        deltas += stream.feed(text[at : at + step])
    return deltas + stream.finish()


def _calls(deltas: list[Delta]) -> list[tuple[str, str]]:
    names = {d.index: d.name for d in deltas if isinstance(d, CallStart)}
    arguments: dict[int, str] = {}
    for delta in deltas:
        if isinstance(delta, ArgumentsDelta):
            arguments[delta.index] = arguments.get(delta.index, "") + delta.fragment
    return [(names[i], arguments[i]) for i in sorted(names)]


def _content(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, ContentDelta))


@pytest.mark.parametrize("fmt", [GENERIC, HERMES, MISTRAL, LLAMA3], ids=lambda f: f.name)
def test_every_format_reads_back_what_it_writes_whatever_the_pieces(fmt: ToolFormat) -> None:
    """Calls written in a format are read back as the same calls, fed whole or a character at a time, and
    nothing of them reaches content."""
    text = fmt.calls_text(CALLS)
    for step in (1, 3, len(text)):
        deltas = _replay(fmt, text, step)
        assert [(n, json.loads(a)) for n, a in _calls(deltas)] == [(n, json.loads(a)) for n, a in CALLS]
        assert _content(deltas) == ""
        ids = [d.id for d in deltas if isinstance(d, CallStart)]
        assert len(set(ids)) == len(ids)
        assert all(i.startswith("call_") for i in ids)


def test_marked_formats_keep_the_text_before_a_call_and_hold_back_a_partial_marker() -> None:
    """Hermes: text, then a call; a text ending in `<tool_` holds that tail back until it is known."""
    text = "Let me check.\n" + HERMES.calls_text(CALLS[:1])
    deltas = _replay(HERMES, text, 1)
    assert _content(deltas) == "Let me check.\n"
    assert [name for name, _ in _calls(deltas)] == ["get_weather"]
    stream = ToolCallStream(HERMES, NAMES)
    assert _content(stream.feed("a <tool_")) == "a "
    assert _content(stream.feed("box> b")) == "<tool_box> b"  # known now: no marker after all
    assert stream.finish() == []


def test_plain_text_and_unknown_tools_stay_content() -> None:
    """An answer that is no call, or a call to a tool that was not offered, is content."""
    assert _content(_replay(GENERIC, "Paris is sunny.", 2)) == "Paris is sunny."
    unknown = GENERIC.calls_text([("delete_everything", "{}")])
    deltas = _replay(GENERIC, unknown, 4)
    assert _content(deltas) == unknown
    assert not _calls(deltas)


def test_forced_call_streams_argument_fragments() -> None:
    """A named call: the start first, then every piece as an argument fragment."""
    stream = ToolCallStream(GENERIC, NAMES, forced_name="add")
    deltas = stream.feed('{"a": ') + stream.feed("1}") + stream.finish()
    assert isinstance(deltas[0], CallStart)
    assert deltas[0].name == "add"
    assert [d.fragment for d in deltas if isinstance(d, ArgumentsDelta)] == ['{"a": ', "1}"]


def test_formats_are_recognised_from_templates() -> None:
    """A template that knows tools and writes `<tool_call>` is Hermes; one that knows no tools is generic."""
    assert detect_format("{% for t in tools %}<tool_call>{% endfor %}", True) is HERMES
    assert detect_format("[TOOL_CALLS]", True) is MISTRAL
    assert detect_format("<tool_call>", False) is GENERIC
    assert detect_format(None, False) is GENERIC


def test_grammars_load_in_llama_cpp_and_refuse_bad_schemas(model_path: Path) -> None:
    """Named, required and parallel grammars compile and load; a schema the converter cannot take is a 400
    naming `tools`. Prints the compile time of 20 tools (cold, then cached)."""
    model = NativeModel(model_path)
    try:
        tools = [
            _tool(
                f"tool_{i}",
                {"type": "object", "properties": {"x": {"type": "integer"}, f"s{i}": {"type": "string"}}},
            )
            for i in range(20)
        ]
        started = time.perf_counter()
        grammar = tool_grammar(tools, True, GENERIC)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        tool_grammar(tools, True, GENERIC)
        cached = time.perf_counter() - started
        print(f"grammar for 20 tools: {cold * 1000:.1f} ms cold, {cached * 1000:.3f} ms cached")
        for text in (grammar, tool_grammar(tools[:2], False, HERMES), arguments_grammar(tools[0])):
            sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, text.encode(), b"root")
            assert sampler
            llama_cpp.llama_sampler_free(sampler)
    finally:
        model.close()
    with pytest.raises(InvalidRequestError) as refused:
        arguments_grammar(_tool("f", {"type": "object", "properties": {"x": {"type": "foo"}}}))
    assert refused.value.param == "tools"
