"""What an evaluation evaluates: the loaders travel to any worker (pickled) and load their own
copy of the chain there."""

from __future__ import annotations

import pickle

from conftest import ROOT

from toolkit import use_cassette
from toolkit.discovery import discover
from toolkit.targets import ChainLoader, ModelLoader


def test_a_chain_loader_is_picklable_and_loads_its_own_chain() -> None:
    spec = discover(ROOT / "chains").get("qa")
    loader = ChainLoader(spec.name, ROOT / "chains", spec.path, spec.model_config, pyfunc=False)
    copied = pickle.loads(pickle.dumps(loader))
    assert copied == loader
    with use_cassette(ROOT / "cassettes" / "qa.json", "none"):
        invoke = copied()
        assert "MLflow" in invoke({"question": "What is MLflow?"})


def test_a_pyfunc_chain_loader_answers_one_row_as_predict_does() -> None:
    spec = discover(ROOT / "chains").get("circle_area")
    loader = ChainLoader(spec.name, ROOT / "chains", spec.path, spec.model_config, pyfunc=True)
    answer = pickle.loads(pickle.dumps(loader))()([2.0, 0.5])
    assert [round(float(area), 3) for area in answer] == [12.566, 0.785]


def test_a_model_loader_is_picklable() -> None:
    loader = ModelLoader("models:/qa@candidate")
    assert pickle.loads(pickle.dumps(loader)) == loader
