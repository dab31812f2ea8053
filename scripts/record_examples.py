"""Re-record the example chains' cassettes from the loopback fake OpenAI server.

The OpenAI API cannot be reached where chainkit is developed, so the committed cassettes
under cassettes/ were recorded here, from tests/openai_server.py (answers shaped exactly like
the real API's, text from ANSWERS below). With OPENAI_API_KEY set, record from the real API instead:

    .venv/bin/chainkit run qa --input '{"question": "What is MLflow?"}' --record-mode all

Run: .venv/bin/python scripts/record_examples.py [CHAIN ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import HOP_BY_HOP, JSON_TYPE, OpenAIServer, _Answer, default_responder  # noqa: E402

from toolkit.evaluation import EvalOptions, datasets_for, evaluate  # noqa: E402
from toolkit.project import Project  # noqa: E402
from toolkit.runner import run_chain  # noqa: E402

#: The inputs each example chain is recorded on (the README and the tests use these).
INPUTS: dict[str, list[dict[str, Any]]] = {
    "qa": [{"question": "What is MLflow?"}, {"question": "What is a registered model?"}],
    "stream_story": [{"topic": "a robot learning to paint"}],
    "rag": [
        {"question": "How do I create a new version of a registered model?"},
        {"question": "What does a signature describe?"},
    ],
    "chat_as_code": [{"messages": [{"role": "user", "content": "What is MLflow?"}]}],
    "extract": [
        {"text": "Hi, I'm Ada Lovelace from Analytical Engines Ltd; write to ada@example.com."},
        {"text": "Grace Hopper here (grace@navy.example), no company to speak of."},
    ],
    "agent": [
        {"messages": [{"role": "user", "content": "What's the weather in Tokyo?"}]},
        {"messages": [{"role": "user", "content": "What's the weather in Paris?"}]},
    ],
    "responses_agent": [{"input": [{"role": "user", "content": "What is MLflow?"}]}],
    "summarize": [
        {
            "text": "MLflow is an open-source platform to manage the machine learning lifecycle, "
            "including experimentation, reproducibility, deployment, and a central model registry."
        }
    ],
}

#: Inputs also recorded streamed (``chainkit run NAME --stream``), where streaming sends other requests.
STREAMED: dict[str, list[dict[str, Any]]] = {
    "responses_agent": [{"input": [{"role": "user", "content": "What is MLflow?"}]}],
}

ANSWERS = {  # the first needle found in the request wins
    "What is MLflow?": "MLflow is an open-source platform for managing the machine learning "
    "lifecycle. It tracks experiments, packages models, and serves them through a registry.",
    "What is a registered model?": "A registered model is a named entry in the MLflow Model "
    "Registry. Each time you register a logged model under that name, it gets a new version.",
    "robot learning to paint": "A robot named Ivo dipped its brush in blue and painted a sky. "
    "The sky dripped, so Ivo painted rain. By evening the gallery called it a masterpiece.",
    "new version of a registered model": "Call mlflow.register_model(model_uri, name): each call "
    "creates a new numbered version of that registered model. An alias can then be moved to it.",
    "What does a signature describe": "A signature describes a model's inputs and outputs. It is "
    "inferred from an input example at logging time and enforced when the model predicts.",
    "How do I load a logged model?": "Use mlflow.pyfunc.load_model(model_uri); it loads any logged "
    "model behind one predict interface, whatever its flavor.",
    "numbered versions. An alias": "The Model Registry keeps numbered versions of each named model, "
    "and an alias such as champion points at one version.",
    "21\\u00b0C, sunny": "It is 21°C and sunny in Paris right now.",
    "open-source platform to manage": "MLflow is an open-source platform that manages the whole "
    "machine learning lifecycle, from experiments to a central model registry.",
}


CONTACTS = {
    "Ada Lovelace": {"name": "Ada Lovelace", "email": "ada@example.com", "company": "Analytical Engines Ltd"},
    "Grace Hopper": {"name": "Grace Hopper", "email": "grace@navy.example", "company": None},
    "Alan Turing": {"name": "Alan Turing", "email": "alan@bletchley.example", "company": "Bletchley Park"},
}


def responder(endpoint: str, body: dict[str, Any]) -> str:
    text = json.dumps(body)
    if "response_format" in body:  # structured output: answer with JSON that fits the schema
        return json.dumps(next(c for name, c in CONTACTS.items() if name in text))
    for needle, answer in ANSWERS.items():
        if needle in text:
            return answer
    return default_responder(endpoint, body)


#: Real OpenAI responses (source and licence inside each file; tests/data/openai-recorded/README.md).
RECORDED = ROOT / "tests" / "data" / "openai-recorded"
#: The agent's turns answered with real API bodies: (city, turn) -> file. "call": the question,
#: answered with a real tool call; "answer": after the tool's result, a real final answer.
AGENT_TURNS = {
    ("Tokyo", "call"): "chat-completion-tools-0.json",  # get_weather {"location": "Tokyo"}
    ("Paris", "call"): "chat-completion-tools-1.json",  # get_weather {"location": "Paris"}
    ("Tokyo", "answer"): "chat-completion-0.json",
}

#: The legacy completions endpoint (chat_as_code) answered with real API bodies, by stream flag.
COMPLETIONS = {False: "completions-0.json", True: "completions-stream-0.json"}


class ExampleServer(OpenAIServer):
    """The fake server, answering with real recorded OpenAI bodies where the repository has one:
    the agent's tool loop (its first turn gets a real tool call, its turn after the tool result a
    real final answer, or, for a city with no recorded answer, the fake server's own answer,
    shaped like the real API's) and every legacy completion (chat_as_code)."""

    def _find_recorded(self, endpoint: str, body: dict[str, Any]) -> _Answer | None:
        messages = body.get("messages") or []
        if endpoint == "completions":
            file: str | None = COMPLETIONS[bool(body.get("stream"))]
        elif endpoint != "chat/completions" or not body.get("tools") or not messages:
            return super()._find_recorded(endpoint, body)
        else:
            turn = "answer" if messages[-1].get("role") == "tool" else "call"
            question = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
            city = next((c for c, _ in AGENT_TURNS if c in question), None)
            file = AGENT_TURNS.get((city or "", turn))
        if file is None:
            return None
        response = json.loads((RECORDED / file).read_text())["response"]
        headers = {k: v for k, v in response["headers"].items() if k.lower() not in HOP_BY_HOP}
        content_type = headers.pop("content-type", JSON_TYPE)
        data = response["body"].encode()
        if body.get("stream"):  # served event by event, as the API sent them
            events = [event + b"\n\n" for event in data.split(b"\n\n") if event]
            return _Answer(response["status"], content_type, events=events, headers=headers, recorded=True)
        return _Answer(response["status"], content_type, data, headers=headers, recorded=True)


def main(only: list[str]) -> None:
    project = Project.at(ROOT)
    with ExampleServer(responder=responder) as server:
        os.environ["CHAINKIT_RECORD_VIA"] = server.base_url.removesuffix("/v1")
        for name, inputs in INPUTS.items():
            if only and name not in only:
                continue
            project.cassette_for(name).unlink(missing_ok=True)
            for chain_input in inputs:
                result = run_chain(
                    project,
                    name,
                    chain_input,
                    record_mode="once" if chain_input is inputs[0] else "new_episodes",
                )
                print(f"{name}: recorded {result.recorded} -> {result.output!r}")
            for chain_input in STREAMED.get(name, []):
                result = run_chain(project, name, chain_input, stream=True, record_mode="new_episodes")
                print(f"{name} (streamed): recorded {result.recorded} -> {result.output!r}")
        # Then every dataset row, so that `chainkit eval --all` runs offline.
        with tempfile.TemporaryDirectory() as store:
            for name, data in datasets_for(project).items():
                if only and name not in only:
                    continue
                options = EvalOptions(
                    data=data, record_mode="new_episodes", tracking_uri=f"sqlite:///{store}/mlflow.db"
                )
                summary = evaluate(project, options, chain=name)
                counts = f"{summary.rows} dataset rows, {summary.live_rows} recorded live"
                print(f"{name}: {counts}, {summary.errors} errors")
            import mlflow

            mlflow.flush_trace_async_logging()  # a ResponsesAgent's traces, before the store goes


if __name__ == "__main__":
    main(sys.argv[1:])  # chain names; default: all
