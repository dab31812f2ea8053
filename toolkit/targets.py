"""What an evaluation evaluates: a chain from ``chains/`` or a logged model, and how a worker
loads it. The loaders are picklable, so any engine's worker (a thread, a process, a Spark
executor) loads its own copy of the chain and calls it per row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.attempt import Invoke
from toolkit.discovery import ChainSpec, Flavor
from toolkit.errors import UsageError
from toolkit.loading import chain_code, guarded, load_chain, on_sys_path, predict_python_model
from toolkit.packaging import log_chain
from toolkit.project import Project


@dataclass
class Target:
    """What is evaluated. ``load`` gives its synchronous call: rows run it in worker threads
    rather than awaiting ``ainvoke`` (LangChain's async path costs ~40% more CPU per call, 2.25
    vs 1.59 ms replayed, measured, and CPU is what bounds a fast job)."""

    name: str
    model_id: str | None
    cassette: Path
    load: Callable[[], Invoke]


def chain_target(
    project: Project,
    spec: ChainSpec,
    experiment_id: str,
    record_mode: str | None,
    model_id: str | None,
    cassette: Path,
) -> Target:
    """``model_id``: the resumed run's model. It is kept, not logged again: in record modes the
    cassette (part of a model's fingerprint) changed since the run started, and a new model
    would get the metrics of rows the run's model answered."""
    if model_id is None:
        with chain_code(f"chain {spec.name}"):  # logging runs the chain on its example
            model_id = log_chain(
                project, spec, experiment_id, record_mode=record_mode, cassette=cassette
            ).model_id
    load = ChainLoader(
        spec.name, project.chains_dir, spec.path, spec.model_config, spec.flavor is Flavor.PYFUNC
    )
    return Target(spec.name, model_id, cassette, load)


@dataclass(frozen=True)
class ChainLoader:
    """Loads a chain file and gives its invoke: picklable, so a worker process loads its own."""

    name: str
    chains_dir: Path
    path: Path
    model_config: Path | None
    pyfunc: bool

    def __call__(self) -> Invoke:
        with on_sys_path(self.chains_dir):
            chain = load_chain(self.path, self.model_config)
        what = f"chain {self.name}"
        if self.pyfunc:
            return guarded(lambda inputs: predict_python_model(chain, inputs), what)
        return guarded(chain.invoke, what)


def model_target(project: Project, model_uri: str, cassette: Path | None) -> Target:
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    model_id = getattr(info, "model_id", None)
    name = mlflow.get_logged_model(model_id).tags.get("chainkit.chain") if model_id else None
    if cassette is None and name is None:
        raise UsageError(
            f"{model_uri} was not logged by chainkit: pass --cassette to say which recording to use"
        )
    path = cassette or project.cassette_for(str(name))

    return Target(str(name or model_uri), model_id, path, ModelLoader(model_uri))


@dataclass(frozen=True)
class ModelLoader:
    """Loads a logged model and gives its invoke: picklable, so a worker process loads its own."""

    model_uri: str

    def __call__(self) -> Invoke:
        import mlflow

        model_uri = self.model_uri
        with chain_code(f"model {model_uri}: loading it"):
            model = mlflow.pyfunc.load_model(model_uri)
        if "langchain" in model.metadata.flavors:
            # The logged chain itself, called as serving calls it per request. (pyfunc.predict
            # would run it in MLflow's own thread pool, out of reach of per-row accounting.)
            return guarded(model.get_raw_model().invoke, f"model {model_uri}")

        def predict(inputs: Any) -> Any:
            output = model.predict(inputs)
            # pyfunc answers a dict input with a one-element list (DESIGN field note 6).
            return (
                output[0]
                if isinstance(inputs, dict) and isinstance(output, list) and len(output) == 1
                else output
            )

        return guarded(predict, f"model {model_uri}")


__all__ = ["ChainLoader", "ModelLoader", "Target", "chain_target", "model_target"]
