"""The frameworks users point at us, on the embedded model: LangChain's ChatOpenAI (`bind_tools`,
`with_structured_output` by JSON schema and by function calling) and an OpenAI Agents SDK agent on
`OpenAIChatCompletionsModel` with a function tool. Calls are forced (a 135M model rarely chooses one), and only one
at a time: a small model repeats calls until max_tokens when it may make several."""

import asyncio
from collections.abc import Iterator

import jsonschema
import openai
import pydantic
import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tokserve.config import Settings


class Weather(pydantic.BaseModel):
    """The weather in a city."""

    city: str = pydantic.Field(max_length=16)
    celsius: int = pydantic.Field(ge=-50, le=50)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"18 degrees in {city}"


@pytest.fixture
def chat_model(base_url: str, settings: Settings) -> Iterator[ChatOpenAI]:
    yield ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key=pydantic.SecretStr("x"),
        model=settings.model_name,
        max_retries=0,
        temperature=0,
        max_completion_tokens=60,
    )


def test_langchain_bind_tools_streamed_and_whole(chat_model: ChatOpenAI) -> None:
    bound = chat_model.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    question = "What is the weather in Paris?"
    message = bound.invoke(question)
    assert isinstance(message, AIMessage)
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    assert call["id"] and call["id"].startswith("call_")

    chunks = list(bound.stream(question))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(call["name"], call["args"])]  # type: ignore[attr-defined]
    # The arguments arrive in pieces, as they are generated.
    assert len([chunk for chunk in chunks if chunk.tool_call_chunks]) > 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(chat_model: ChatOpenAI, method: str) -> None:
    structured = chat_model.with_structured_output(Weather, method=method)  # type: ignore[arg-type]
    answer = structured.invoke("The weather in Paris: how warm is it?")
    assert isinstance(answer, Weather)


def test_openai_agents_sdk_calls_the_function_tool(base_url: str, settings: Settings) -> None:
    """An agent with one function tool and tool_choice required: the SDK runs the tool with the model's arguments
    and, told to stop at the first tool, answers with its result. Tracing off: it would post to the internet."""
    set_tracing_disabled(True)
    seen: list[dict[str, str]] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        seen.append({"city": city})
        return f"18 degrees in {city}"

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        agent = Agent(
            name="forecaster",
            instructions="Answer questions about the weather.",
            model=OpenAIChatCompletionsModel(model=settings.model_name, openai_client=client),
            tools=[weather],
            model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0),
            tool_use_behavior="stop_on_first_tool",
        )
        result = await Runner.run(agent, "What is the weather in Paris?")
        await client.close()
        return str(result.final_output)

    output = asyncio.run(run())
    (arguments,) = seen
    jsonschema.validate(arguments, {"type": "object", "properties": {"city": {"type": "string"}}})
    assert output == f"18 degrees in {arguments['city']}"
