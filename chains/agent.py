"""A LangGraph tool-calling agent (ReAct loop): it calls a tool, reads its result, then answers.

The graph is ``langchain.agents.create_agent`` (LangGraph underneath) over chat completions
with two tools. Its output is the graph's state: ``{"messages": [...]}``, the user's question,
the model's tool call, the tool's result and the final answer.
"""

import mlflow
from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What's the weather in Tokyo?"}]}

WEATHER = {"tokyo": "18°C, light rain", "paris": "21°C, sunny", "london": "14°C, overcast"}
POPULATION = {"tokyo": 14_000_000, "paris": 2_100_000, "london": 8_900_000}


@tool
def get_weather(location: str) -> str:
    """The current weather in a city."""
    return WEATHER.get(location.strip().lower(), f"no weather report for {location}")


@tool
def get_population(city: str) -> int:
    """How many people live in a city (its city proper)."""
    return POPULATION.get(city.strip().lower(), 0)


agent = create_agent(
    ChatOpenAI(model="gpt-4o-mini", temperature=0, base_url="https://api.openai.com/v1"),
    tools=[get_weather, get_population],
    system_prompt="You are a helpful assistant that uses tools. Call a tool when it can answer.",
)

mlflow.models.set_model(agent)
