"""Extracts a contact (name, email, company) from free text as structured output."""

import mlflow
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

INPUT_EXAMPLE = {"text": "Hi, I'm Ada Lovelace from Analytical Engines Ltd; write to ada@example.com."}


class Contact(BaseModel):
    name: str = Field(description="The person's full name")
    email: str | None = Field(description="Their email address, if given")
    company: str | None = Field(description="Their company, if given")


prompt = ChatPromptTemplate.from_messages(
    [("system", "Extract the contact details from the user's text."), ("user", "{text}")]
)
structured = ChatOpenAI(model="gpt-4o-mini", temperature=0).with_structured_output(
    Contact, method="json_schema"
)
# A plain dict out: what MLflow's signature and pyfunc.predict serve.
chain = prompt | structured | RunnableLambda(lambda contact: contact.model_dump())

mlflow.models.set_model(chain)
