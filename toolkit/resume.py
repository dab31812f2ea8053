"""Resuming an evaluation: what a run must match to be finished by ``--resume``.

A run's rows mean something only with the chain (or model), dataset, cassette, record mode and
scoring that produced them. Those are stored as ``chainkit.*`` tags when the run starts, and a
resume that differs is refused (exit 2) before anything is logged. ``--concurrency``,
``--prices``, ``--trace`` and ``--allow-host`` may change: they decide how rows run, not what
answers or scores them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import UsageError
from toolkit.journal import Journal
from toolkit.redaction import scrub
from toolkit.replay import RecordMode


def run_settings(
    mode: RecordMode, dataset_sha: str, scorers: Sequence[str], aggregations: Sequence[str]
) -> dict[str, str]:
    """What gives a run's rows their meaning, so a resume must match it (with the chain or model,
    added by the caller). --concurrency, --prices, --trace and --allow-host may change on resume:
    they decide how rows run, not what answers or scores them."""
    return {
        "chainkit.dataset_sha256": dataset_sha,
        "chainkit.record_mode": mode.value,
        "chainkit.scorers": json.dumps(sorted(set(scorers))),
        "chainkit.aggregations": json.dumps(sorted(set(aggregations))),
    }


#: ``--resume`` with no run id: the latest unfinished run of the same chain and dataset.
LATEST_RUN = "latest"


def latest_unfinished_run(experiment_id: str, evaluated: str, dataset_sha: str, data: Path) -> str:
    """The id of the newest run of ``evaluated`` over this dataset that did not finish (killed,
    interrupted or failed), as promptfoo's ``--resume`` picks it."""
    from mlflow import MlflowClient

    def quoted(value: str) -> str:
        return value.replace("\\", "\\\\").replace("'", "\\'")

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`chainkit.evaluated` = '{quoted(evaluated)}' "
        f"and tags.`chainkit.dataset_sha256` = '{dataset_sha}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in runs:
        if run.info.status != "FINISHED":
            return str(run.info.run_id)
    raise UsageError(
        f"--resume: no unfinished run of {evaluated} over {data} (this content) to resume; "
        "start a new run without --resume, or name a run id"
    )


def resumed_run(run_id: str) -> Any:
    from mlflow import MlflowClient

    try:
        return MlflowClient().get_run(run_id)
    except Exception as exc:
        raise UsageError(f"--resume {run_id}: no such MLflow run ({exc}); check the run id") from exc


def check_resume(run: Any, settings: Mapping[str, str], data: Path) -> None:
    """Refuse to finish ``run`` with another chain, model, dataset, record mode or scoring."""
    if run is None:
        return
    run_id, tags = run.info.run_id, dict(run.data.tags)
    if "chainkit.dataset_sha256" not in tags:
        raise UsageError(f"--resume {run_id}: that run is not a chainkit evaluation; check the run id")
    if "chainkit.evaluated" not in tags:  # a run started before chainkit recorded it
        tags["chainkit.evaluated"] = f"chain {tags.get('chainkit.chain')}"
    now = scrub(dict(settings))[0]
    # A key the run lacks was not recorded yet when it started: nothing to compare.
    changed = [key for key in now if tags.get(key) not in (None, now[key])]
    if "chainkit.evaluated" in changed:  # another chain or model: the other differences follow
        changed = ["chainkit.evaluated"]
    if changed:
        differences = "; ".join(
            _DIFFERENCES[key].format(then=tags[key], now=now[key], data=data, run=run_id) for key in changed
        )
        raise UsageError(
            f"--resume {run_id} does not match that run: {differences}; resume with the chain and "
            "options the run started with, or start a new run without --resume"
        )


_DIFFERENCES = {
    "chainkit.evaluated": "it evaluated {then}, not {now}",
    "chainkit.model_id": "it evaluated model {then}, not {now}",
    "chainkit.chain_sha256": "the chain's code changed since run {run} started (its sha256 differs)",
    "chainkit.dataset_sha256": "{data} changed since run {run} started (its sha256 differs)",
    "chainkit.cassette": "it replayed {then}, not {now}",
    "chainkit.record_mode": "it ran in record mode {then}, not {now}",
    "chainkit.mode": "it sent its requests {then} (batch: --batch-api), not {now}",
    "chainkit.scorers": "its extra scorers were {then}, not {now}",
    "chainkit.aggregations": "its aggregations were {then}, not {now}",
}


def pin_dataset(journal: Journal, data: Path, run_id: str | None, dataset_sha: str) -> None:
    """The journal keeps the dataset's sha256 from the first start: a resume must read the same."""
    recorded = journal.get_meta("dataset_sha256")
    if recorded is None:
        journal.set_meta("dataset_sha256", dataset_sha)
    elif recorded != dataset_sha:
        raise UsageError(
            f"{data} changed since run {run_id} started (its sha256 differs): resume "
            "with the same file, or start a new run"
        )


__all__ = [
    "LATEST_RUN",
    "check_resume",
    "latest_unfinished_run",
    "pin_dataset",
    "resumed_run",
    "run_settings",
]
