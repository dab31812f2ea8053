"""Answers a question about MLflow in two or three sentences (chat completions)."""

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"question": "What is MLflow?"}

prompt = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a concise assistant for MLflow users. Answer in two or three sentences."),
        ("user", "{question}"),
    ]
)
chain = prompt | ChatOpenAI(model="gpt-4o-mini", temperature=0) | StrOutputParser()

mlflow.models.set_model(chain)
