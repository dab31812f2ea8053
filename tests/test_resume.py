"""What a resumed evaluation must match (toolkit/resume.py), against runs in a real MLflow store;
the end-to-end refusals through ``chainkit eval --resume`` are in test_evaluation.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from toolkit.errors import UsageError
from toolkit.journal import Journal
from toolkit.replay import RecordMode
from toolkit.resume import check_resume, pin_dataset, resumed_run, run_settings


def _run(tmp_path: Path, tags: dict[str, str]) -> object:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    return client.get_run(client.create_run(experiment, tags=tags).info.run_id)


def test_a_resume_with_the_same_settings_passes_and_each_difference_is_named(tmp_path: Path) -> None:
    settings = run_settings(RecordMode.NONE, "abc", ["contains"], ["mean"]) | {
        "chainkit.evaluated": "chain qa"
    }
    run = _run(tmp_path, settings)
    check_resume(run, settings, Path("d.jsonl"))  # the same: nothing to say
    check_resume(None, settings, Path("d.jsonl"))  # not a resume
    other = settings | {"chainkit.record_mode": "all", "chainkit.scorers": "[]"}
    with pytest.raises(UsageError, match=r"record mode none, not all; its extra scorers were") as refused:
        check_resume(run, other, Path("d.jsonl"))
    assert "start a new run without --resume" in str(refused.value)
    with pytest.raises(UsageError, match=r"it evaluated chain qa, not chain rag;"):
        check_resume(run, other | {"chainkit.evaluated": "chain rag"}, Path("d.jsonl"))  # the chain alone


def test_a_run_that_is_not_an_evaluation_or_does_not_exist_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path, {"mlflow.runName": "training"})
    with pytest.raises(UsageError, match="not a chainkit evaluation"):
        check_resume(run, run_settings(RecordMode.NONE, "abc", [], ["mean"]), Path("d.jsonl"))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with pytest.raises(UsageError, match="--resume nope: no such MLflow run"):
            resumed_run("nope")
    finally:
        mlflow.set_tracking_uri(None)


def test_the_journal_pins_the_dataset_it_started_with(tmp_path: Path) -> None:
    with Journal(tmp_path / "run.sqlite") as journal:
        pin_dataset(journal, Path("d.jsonl"), None, "sha-1")
        pin_dataset(journal, Path("d.jsonl"), "run-1", "sha-1")
        with pytest.raises(UsageError, match=r"d\.jsonl changed since run run-1 started"):
            pin_dataset(journal, Path("d.jsonl"), "run-1", "sha-2")
