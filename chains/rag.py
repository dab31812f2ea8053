"""Answers MLflow questions from a small corpus: embeddings, an in-memory vector store, and chat."""

from operator import itemgetter

import mlflow
from _shared.corpus import load_corpus
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

INPUT_EXAMPLE = {"question": "How do I create a new version of a registered model?"}

# check_embedding_ctx_length=False: send the texts as they are. The default tokenizes them with
# tiktoken first, which downloads its encoding files at first use: impossible offline.
embeddings = OpenAIEmbeddings(model="text-embedding-3-small", check_embedding_ctx_length=False)
retriever = InMemoryVectorStore.from_texts(load_corpus(), embeddings).as_retriever(search_kwargs={"k": 2})


def format_documents(documents: list) -> str:
    return "\n\n".join(document.page_content for document in documents)


prompt = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question from this context only, in two sentences.\n\nContext:\n{context}"),
        ("user", "{question}"),
    ]
)
chain = (
    {"context": itemgetter("question") | retriever | format_documents, "question": itemgetter("question")}
    | prompt
    | ChatOpenAI(model="gpt-4o-mini", temperature=0)
    | StrOutputParser()
)

mlflow.models.set_model(chain)
