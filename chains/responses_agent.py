"""An MLflow ResponsesAgent (pyfunc) over the OpenAI Responses API (/v1/responses), streamed too.

``predict`` sends one request and returns its output items; ``predict_stream`` streams the answer
as ``response.output_text.delta`` events, then the finished message item. The module declares
no ``INPUT_EXAMPLE``, as MLflow's own ResponsesAgent examples do not.
"""

from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse, ResponsesAgentStreamEvent
from openai import OpenAI

MODEL = "gpt-4o-mini"
INSTRUCTIONS = "You are a concise assistant for MLflow users. Answer in one or two sentences."


class MLflowHelpAgent(ResponsesAgent):
    def __init__(self) -> None:
        self.client = OpenAI(base_url="https://api.openai.com/v1")

    def _messages(self, request: ResponsesAgentRequest) -> list[dict[str, Any]]:
        return [item.model_dump(exclude_none=True) for item in request.input]

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        response = self.client.responses.create(
            model=MODEL, instructions=INSTRUCTIONS, input=self._messages(request)
        )
        return ResponsesAgentResponse(output=[item.to_dict() for item in response.output])

    def predict_stream(self, request: ResponsesAgentRequest) -> Iterator[ResponsesAgentStreamEvent]:
        stream = self.client.responses.create(
            model=MODEL, instructions=INSTRUCTIONS, input=self._messages(request), stream=True
        )
        for event in stream:
            if event.type == "response.output_text.delta":
                yield ResponsesAgentStreamEvent(**self.create_text_delta(event.delta, event.item_id))
            elif event.type == "response.output_item.done":
                yield ResponsesAgentStreamEvent(type="response.output_item.done", item=event.item.to_dict())


mlflow.models.set_model(MLflowHelpAgent())
