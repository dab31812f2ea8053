"""Replies to a chat with a legacy completions model: MLflow's chain_as_code example on langchain 1.x.

MLflow's examples/langchain/chain_as_code.py imports `from langchain.llms import OpenAI`, which
langchain 1.x no longer has; the same model is `langchain_openai.OpenAI` (/v1/completions).
"""

from operator import itemgetter

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import OpenAI

INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What is MLflow?"}]}


def extract_user_query_string(chat_messages_array: list) -> str:
    return chat_messages_array[-1]["content"]


def extract_chat_history(chat_messages_array: list) -> list:
    return chat_messages_array[:-1]


prompt = PromptTemplate(
    template="You are a hello world bot. Respond with a reply to the user's question that is fun "
    "and interesting to the user. User's question: {question}",
    input_variables=["question"],
)
model = OpenAI(model="gpt-3.5-turbo-instruct", temperature=0.9)

chain = (
    {
        "question": itemgetter("messages") | RunnableLambda(extract_user_query_string),
        "chat_history": itemgetter("messages") | RunnableLambda(extract_chat_history),
    }
    | prompt
    | model
    | StrOutputParser()
)

mlflow.models.set_model(model=chain)
