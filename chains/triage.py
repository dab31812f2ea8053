"""Routes a support ticket to a queue with a priority, by rules: a runnable with no model at all."""

import re

import mlflow
from langchain_core.runnables import RunnableLambda

INPUT_EXAMPLE = {"subject": "Charged twice", "body": "My card was charged twice for the March invoice."}

RULES = [  # (queue, pattern): the first match wins
    ("billing", r"\b(charged?|invoice|refund|payment|card)\b"),
    ("security", r"\b(password|hacked|phishing|2fa|login)\b"),
    ("bugs", r"\b(error|crash|broken|bug|exception)\b"),
]
URGENT = r"\b(urgent|asap|immediately|down|outage|twice)\b"


def triage(ticket: dict) -> dict:
    text = f"{ticket.get('subject', '')} {ticket.get('body', '')}".lower()
    queue = next((name for name, pattern in RULES if re.search(pattern, text)), "general")
    priority = "high" if re.search(URGENT, text) else "normal"
    return {"queue": queue, "priority": priority}


chain = RunnableLambda(triage)

mlflow.models.set_model(chain)
