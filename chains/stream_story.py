"""Tells a very short story on a topic, streamed token by token (chat completions, SSE)."""

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"topic": "a robot learning to paint"}

prompt = ChatPromptTemplate.from_template("Tell a three-sentence story about {topic}.")
chain = prompt | ChatOpenAI(model="gpt-4o-mini", temperature=0.7, streaming=True) | StrOutputParser()

mlflow.models.set_model(chain)
