"""Summarizes a text in one sentence through the OpenAI Responses API (/v1/responses)."""

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {
    "text": "MLflow is an open-source platform to manage the machine learning lifecycle, "
    "including experimentation, reproducibility, deployment, and a central model registry."
}

prompt = ChatPromptTemplate.from_messages(
    [("system", "Summarize the user's text in one sentence."), ("user", "{text}")]
)
chain = prompt | ChatOpenAI(model="gpt-4o-mini", use_responses_api=True) | StrOutputParser()

mlflow.models.set_model(chain)
