"""Frameworks on-site apps are built on, used as their quick starts use them, against a running appliance:
LangChain's ChatOpenAI (chat completions: tools, streaming, structured output in tool mode, logprobs) and
the OpenAI Agents SDK (an agent with a function tool, over chat completions and over the Responses API)."""

from __future__ import annotations

import asyncio
from typing import Any

import jsonschema
import pydantic
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI

from tests.e2e.server import RunningAppliance

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


@tool
def get_weather(city: str) -> str:
    """The weather forecast for a city."""
    return f"Sunny in {city}, 21 degrees."


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@pytest.fixture
def llm(appliance: RunningAppliance) -> ChatOpenAI:
    """LangChain's OpenAI chat model on the appliance, as its quick start makes one (base_url, api_key)."""
    return _chat_model(appliance, max_tokens=48)


def _chat_model(appliance: RunningAppliance, **options: Any) -> ChatOpenAI:
    # Keyword arguments as the quick start passes them (mypy's view of the pydantic aliases disagrees).
    settings: dict[str, Any] = {"temperature": 0, "max_retries": 0, "api_key": appliance.user_key, **options}
    return ChatOpenAI(model="default", base_url=f"{appliance.base_url}/v1", **settings)


def test_langchain_invoke(llm: ChatOpenAI) -> None:
    """A plain question: an AIMessage with text and token usage."""
    answer = llm.invoke("Say hello.")
    assert isinstance(answer, AIMessage)
    assert answer.content
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] > 0


def test_langchain_bound_tool_call(llm: ChatOpenAI) -> None:
    """bind_tools with a named tool_choice: the AIMessage's tool_calls name it with valid arguments."""
    answer = llm.bind_tools([get_weather, add], tool_choice="get_weather").invoke("Weather in Oslo?")
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER_SCHEMA)
    assert call["id"]


def test_langchain_streamed_tool_call_equals_the_whole_one(llm: ChatOpenAI) -> None:
    """Streamed chunks added up (LangChain merges tool_call_chunks by index) give the same call."""
    bound = llm.bind_tools([get_weather, add], tool_choice="get_weather")
    total: AIMessageChunk | None = None
    for chunk in bound.stream("Weather in Oslo?"):
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    whole = bound.invoke("Weather in Oslo?")
    assert [c["args"] for c in total.tool_calls] == [c["args"] for c in whole.tool_calls]
    assert total.response_metadata.get("finish_reason") == "tool_calls"


def test_langchain_tool_conversation(llm: ChatOpenAI) -> None:
    """The agent loop by hand: the call, the tool's result as a ToolMessage, then an answer in text."""
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather in Rome?")
    call_message = bound.invoke([question])
    (call,) = call_message.tool_calls
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.bind_tools([get_weather]).invoke([question, call_message, result])
    assert isinstance(answer, AIMessage)
    assert answer.content or answer.tool_calls


class Weather(pydantic.BaseModel):
    """A forecast."""

    city: str
    temperature_celsius: int


def test_langchain_structured_output_in_tool_mode(llm: ChatOpenAI) -> None:
    """with_structured_output(method="function_calling") forces a tool call and parses it into the model."""
    extract = llm.with_structured_output(Weather, method="function_calling")
    forecast = extract.invoke("It is 18 degrees in Lisbon today.")
    assert isinstance(forecast, Weather)


def test_langchain_logprobs(appliance: RunningAppliance) -> None:
    """ChatOpenAI(logprobs=True) reads the log probabilities into the response metadata."""
    llm = _chat_model(appliance, max_tokens=6, logprobs=True)
    answer = llm.invoke("Say hello.")
    entries = answer.response_metadata["logprobs"]["content"]
    assert entries
    assert all(entry["logprob"] <= 0 for entry in entries)


calls_seen: list[dict[str, Any]] = []


@function_tool
def lookup_weather(city: str) -> str:
    """The weather forecast for a city."""
    calls_seen.append({"city": city})
    return f"Sunny in {city}."


def _agent(model: Any) -> Agent[Any]:
    # Stops at the first tool call with its output, so the run's outcome does not hang on what a 135M model
    # writes after it; the named tool_choice makes the call itself certain.
    return Agent(
        name="Forecaster",
        instructions="You answer questions about the weather.",
        model=model,
        tools=[lookup_weather],
        model_settings=ModelSettings(tool_choice="lookup_weather", temperature=0, max_tokens=48),
        tool_use_behavior="stop_on_first_tool",
    )


@pytest.fixture
def async_client(appliance: RunningAppliance) -> AsyncOpenAI:
    """The Agents SDK's quick start for other providers: an AsyncOpenAI client, tracing off (no egress)."""
    set_tracing_disabled(True)
    return AsyncOpenAI(base_url=f"{appliance.base_url}/v1", api_key=appliance.user_key, max_retries=0)


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_agents_sdk_runs_a_tool(async_client: AsyncOpenAI, api: str) -> None:
    """Runner.run_sync: the agent calls the function tool with valid arguments; its output is the answer."""
    model: Any = (
        OpenAIChatCompletionsModel(model="default", openai_client=async_client)
        if api == "chat_completions"
        else OpenAIResponsesModel(model="default", openai_client=async_client)
    )
    calls_seen.clear()
    result = Runner.run_sync(_agent(model), "What is the weather in Madrid?")
    (arguments,) = calls_seen
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    assert result.final_output == f"Sunny in {arguments['city']}."


def test_agents_sdk_streams_over_responses(async_client: AsyncOpenAI) -> None:
    """Runner.run_streamed over the Responses API: text deltas arrive and add up to the final output."""
    agent = Agent(
        name="Greeter",
        instructions="Answer in one short sentence.",
        model=OpenAIResponsesModel(model="default", openai_client=async_client),
        model_settings=ModelSettings(
            temperature=0, max_tokens=200
        ),  # room to finish: a cut answer fails the run
    )

    async def run() -> tuple[str, str]:
        streamed = Runner.run_streamed(agent, "Say hello.")
        text = ""
        async for event in streamed.stream_events():
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                text += event.data.delta
        return text, str(streamed.final_output)

    text, final = asyncio.run(run())
    assert text
    assert text == final
