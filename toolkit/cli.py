"""The ``chainkit`` command: parse arguments, call the library, print.

Exit codes: 0 success, 1 work failed (a chain that would not run, a replay miss), 2 bad usage.
``--json`` prints exactly one JSON document on stdout. Errors are one sentence on stderr;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from toolkit.errors import ChainkitError, UsageError, refusal_in
from toolkit.record_mode import RecordMode

F = TypeVar("F", bound=Callable[..., Any])

# Options several commands share, defined once so their names and help stay the same.
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
record_mode_option = click.option(
    "--record-mode",
    type=click.Choice(RecordMode.choices()),
    default=None,
    help="Default: $CHAINKIT_RECORD_MODE, else none (replay only, offline).",
)
allow_host_option = click.option(
    "--allow-host", "allow_hosts", multiple=True, help="A host that may be reached live (repeatable)."
)
tracking_uri_option = click.option(
    "--tracking-uri", default=None, help="Default: $MLFLOW_TRACKING_URI, else sqlite:///PROJECT/mlflow.db."
)


class Context:
    def __init__(self, project: str, debug: bool, verbose: bool = False) -> None:
        self.project_dir = project
        self.debug = debug
        self.verbose = verbose

    @property
    def project(self) -> Any:
        from toolkit.project import Project, load_env

        project = Project.at(self.project_dir)
        load_env(project.root)
        return project


def reports_errors(func: F) -> F:
    """Turn chainkit errors into one line on stderr and the right exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except UsageError as exc:
            fail(ctx, exc, 2)
        except ChainkitError as exc:
            fail(ctx, exc, 1)
        except Exception as exc:  # a chain's own failure: name it, don't dump a traceback
            refusal = refusal_in(exc)
            if refusal is None:
                fail(ctx, exc, 1, prefix=f"{type(exc).__name__}: ")
            else:  # a miss that a client or the chain's code wrapped: chainkit's words, not theirs
                fail(ctx, refusal, 1)

    return wrapper  # type: ignore[return-value]


def fail(ctx: click.Context, exc: BaseException, code: int, prefix: str = "") -> None:
    if ctx.find_object(Context) is not None and ctx.find_object(Context).debug:  # type: ignore[union-attr]
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"error: {prefix}{exc}", err=True)
    ctx.exit(code)


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def number(value: float) -> str:
    """For a table: an integer as one, else fixed decimals (3 significant digits below 1)."""
    if float(value).is_integer():
        return str(int(value))
    if abs(value) >= 1:
        return f"{value:.3f}"
    decimals = min(8, max(3, 2 - math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int = 48) -> str:
    cells = [[c if len(c) <= width else c[: width - 1] + "…" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _set_project(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Context).project_dir = value


def _set_debug(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).debug = True


def _set_verbose(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).verbose = True


#: Notes that say nothing about the user's command, shown only with --verbose: MLflow's schema
#: hint on every chain with an integer input, the exit note of traced runs, and pyspark's pandas
#: version notice (MLflow imports pyspark wherever it is installed, e.g. with chainkit[spark]).
QUIET_WARNINGS = (
    (r"Hint: Inferred schema contains integer column", UserWarning),
    (r"PySpark does not yet fully support pandas", FutureWarning),
)
QUIET_LOGGERS = ("mlflow.tracing.export.async_export_queue",)


def _quiet_unless_verbose(callback: F) -> F:
    """Run a command with MLflow's chatter silenced unless --verbose (given before or after
    the command: known only once the command's own options are parsed, i.e. here)."""

    @wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context().find_object(Context)
        if context is not None and context.verbose:
            return callback(*args, **kwargs)
        for name in QUIET_LOGGERS:  # left set: the exit note is logged after the command
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for message, category in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            return callback(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Group(click.Group):
    """Takes the global options after the subcommand too, as users type them
    (``chainkit list --project X``), not only before it, and keeps MLflow's chatter out of
    every command's output unless ``--verbose``."""

    group_class = type  # subgroups (``cassette``) are of this class too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            if cmd.callback is not None:
                cmd.callback = _quiet_unless_verbose(cmd.callback)
            cmd.params += [
                click.Option(
                    ["--project"],
                    default=None,
                    expose_value=False,
                    callback=_set_project,
                    help="Project directory (also accepted before the command).",
                ),
                click.Option(
                    ["--debug"],
                    is_flag=True,
                    expose_value=False,
                    callback=_set_debug,
                    help="Show tracebacks.",
                ),
                click.Option(
                    ["--verbose"],
                    is_flag=True,
                    expose_value=False,
                    callback=_set_verbose,
                    help="Show MLflow's own notes and warnings too.",
                ),
            ]
        super().add_command(cmd, name)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project", default=".", show_default=True, help="Project directory (holds chains/, cassettes/)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--verbose", is_flag=True, help="Show MLflow's own notes and warnings too.")
@click.version_option(package_name="chainkit")
@click.pass_context
def cli(ctx: click.Context, project: str, debug: bool, verbose: bool) -> None:
    """Package LangChain chains with MLflow and run them offline from recorded traffic."""
    ctx.obj = Context(project, debug, verbose)


# ------------------------------------------------------------------------------------ list


@cli.command("list")
@json_option
@click.pass_obj
@reports_errors
def list_chains(obj: Context, as_json: bool) -> None:
    """List the chains under chains/ (found without running them) and any problems."""
    from toolkit.discovery import discover

    project = obj.project
    found = discover(project.chains_dir)
    if as_json:
        emit_json(
            {
                "chains": [
                    {
                        "name": spec.name,
                        "path": str(spec.path),
                        "flavor": spec.flavor.value,
                        "description": spec.description,
                        "input_example": spec.input_example,
                        "model_config": str(spec.model_config) if spec.model_config else None,
                        "cassette": str(project.cassette_for(spec.name)),
                        "recorded": project.cassette_for(spec.name).exists(),
                    }
                    for spec in found.chains
                ],
                "problems": [
                    {"path": str(p.path), "line": p.line, "message": p.message} for p in found.problems
                ],
                "warnings": [{"path": str(w.path), "message": w.message} for w in found.warnings],
            }
        )
    else:
        rows = [
            [
                spec.name,
                spec.flavor.value,
                "yes" if project.cassette_for(spec.name).exists() else "no",
                spec.description,
            ]
            for spec in found.chains
        ]
        click.echo(table(["chain", "flavor", "recorded", "description"], rows, width=70))
        for problem in found.problems:
            click.echo(f"problem: {problem}", err=True)
        for warning in found.warnings:
            click.echo(f"warning: {warning}", err=True)
    if found.problems:
        obj_exit(1)


def obj_exit(code: int) -> None:
    click.get_current_context().exit(code)


# ------------------------------------------------------------------------------------- run


@cli.command()
@click.argument("chain")
@click.option("--input", "input_json", required=True, help="The chain's input, as JSON.")
@click.option("--stream", is_flag=True, help="Print the output as it streams.")
@record_mode_option
@click.option(
    "--cassette",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: cassettes/CHAIN.json.",
)
@allow_host_option
@json_option
@click.pass_obj
@reports_errors
def run(
    obj: Context,
    chain: str,
    input_json: str,
    stream: bool,
    record_mode: str | None,
    cassette: Path | None,
    allow_hosts: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run CHAIN on --input, answered from its cassette (recording if --record-mode allows)."""
    from toolkit.runner import run_chain

    try:
        chain_input = json.loads(input_json)
    except ValueError as exc:
        raise UsageError(
            f'--input is not valid JSON ({exc}); pass e.g. --input \'{{"question": "Hi"}}\''
        ) from exc
    on_chunk = None if (as_json or not stream) else (lambda text: click.echo(text, nl=False))
    # With --json, stdout is one JSON document: what the chain itself prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run_chain(
            obj.project,
            chain,
            chain_input,
            stream=stream,
            record_mode=record_mode,
            cassette=cassette,
            allow_hosts=allow_hosts,
            on_chunk=on_chunk,
        )
    if as_json:
        emit_json(result.to_json())
    elif stream:
        click.echo()
    else:
        output = result.output
        click.echo(output if isinstance(output, str) else json.dumps(output, indent=2, default=str))


# ------------------------------------------------------------------------------------- log


@cli.command("log")
@click.argument("chains", nargs=-1)
@click.option("--register", is_flag=True, help="Register a model version named after each chain.")
@click.option("--alias", default=None, help="Move this alias to the new versions (needs --register).")
@click.option("--force", is_flag=True, help="Log again even if an identical model is already logged.")
@click.option(
    "--no-cassette",
    "no_cassette",
    is_flag=True,
    help="Do not store the chain's cassette in the model (CHAINKIT_CASSETTE=model replays it).",
)
@record_mode_option
@tracking_uri_option
@json_option
@click.pass_obj
@reports_errors
def log_command(
    obj: Context,
    chains: tuple[str, ...],
    register: bool,
    alias: str | None,
    force: bool,
    no_cassette: bool,
    record_mode: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Log CHAINS (default: all) to MLflow from code, offline, with exact requirements."""
    from toolkit.packaging import log_chains, tracking_uri_for

    if alias and not register:
        raise UsageError("--alias needs --register: an alias points at a registered model version")
    project = obj.project
    results = log_chains(
        project,
        chains,
        register=register,
        alias=alias,
        force=force,
        record_mode=record_mode,
        tracking_uri=tracking_uri,
        carry_cassette=not no_cassette,
    )
    uri = tracking_uri_for(project, tracking_uri)
    if as_json:
        emit_json({"tracking_uri": uri, "models": [result.to_json() for result in results]})
    else:
        rows = [
            [
                r.name,
                r.status,
                "" if r.version is None else str(r.version),
                r.model_uri or "",
                f"{r.seconds:.2f}s",
            ]
            for r in results
        ]
        click.echo(table(["chain", "status", "version", "model_uri", "time"], rows, width=60))
        for result in results:
            if result.error:
                if obj.debug and result.traceback:
                    click.echo(result.traceback.rstrip(), err=True)
                click.echo(f"error: {result.error}", err=True)
        if uri.startswith("sqlite:"):
            click.echo(f"\nbrowse them: .venv/bin/mlflow ui --backend-store-uri {uri}")
    if not all(result.ok for result in results):
        obj_exit(1)


# ---------------------------------------------------------------------------------- verify


@cli.command("verify")
@click.argument("target", metavar="CHAIN|MODEL_URI")
@click.option("--keep", is_flag=True, help="Keep the scratch folder (model copy, input, output, logs).")
@tracking_uri_option
@json_option
@click.pass_obj
@reports_errors
def verify_command(obj: Context, target: str, keep: bool, tracking_uri: str | None, as_json: bool) -> None:
    """Prove a logged model in a clean environment built from its own requirements.

    CHAIN: the model logged for the chain as it is now (logged first if needed). The model's
    input example is predicted offline from the recordings it carries, with chainkit added only
    as the replay harness, and compared with this process's prediction.
    """
    from toolkit.verify import verify

    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = verify(obj.project, target, tracking_uri=tracking_uri, keep=keep)
    env = result.environment
    if as_json:
        emit_json(result.to_json())
    else:
        for problem in result.problems:
            click.echo(f"problem: {problem}", err=True)
        verdict = "verified" if result.ok else "FAILED"
        model = "" if result.model_uri == target else f" ({result.model_uri})"
        click.echo(f"{verdict}: {target}{model} in a clean environment, {result.seconds:.1f}s")
        if env is not None:
            how = f"built in {env.seconds:.1f}s" if env.built else "cached"
            added = ", ".join(env.harness_added) or "nothing"
            click.echo(f"environment: {env.path} ({how}); added for the replay harness: {added}")
        if result.workdir is not None:
            click.echo(f"kept: {result.workdir}")
    if not result.ok:
        obj_exit(1)


# ------------------------------------------------------------------------------------ eval


@cli.command("eval")
@click.argument("chain", required=False)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Dataset (JSONL, CSV, Parquet). Default: datasets/CHAIN.jsonl.",
)
@click.option("--model-uri", default=None, help="Evaluate a logged model (models:/qa@candidate) instead.")
@click.option("--all", "every", is_flag=True, help="Every chain that has a dataset under datasets/.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Rows at a time (default 8).")
@record_mode_option
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN_ID]",
    help="Finish an interrupted run (no id: the latest unfinished run of this chain and dataset).",
)
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    metavar="SPEC",
    help="module:function, or an MLflow judge's name (recorded in cassettes/CHAIN.judges.json). Repeatable.",
)
@click.option(
    "--aggregate",
    "aggregations",
    default="mean",
    show_default=True,
    help="Comma-separated: mean, min, max, median, variance, p90, sum.",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"model": [usd_per_1M_input, usd_per_1M_output]} for the cost estimate.',
)
@click.option(
    "--cassette",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The recording to replay and record into (default: cassettes/CHAIN.json; for --model-uri, "
    "the one of the chain it was logged from).",
)
@allow_host_option
@tracking_uri_option
@click.option("--trace", is_flag=True, help="A trace per row (LangChain autologged), scores attached to it.")
@click.option(
    "--experiment",
    default=None,
    metavar="NAME",
    help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else chainkit).",
)
@click.option("--run-name", default=None, metavar="NAME", help="Default: CHAIN-DATASET-YYYYMMDD-HHMMSS.")
@click.option(
    "--engine",
    type=click.Choice(["threads", "processes", "spark"]),
    default="threads",
    show_default=True,
    help="Where rows run: threads of this process, worker processes (all cores), or Spark "
    "executors (replay only; needs chainkit[spark] and Java).",
)
@click.option("--workers", type=int, default=None, help="Processes for --engine processes (default: CPUs).")
@click.option(
    "--spark-master",
    default="local[*]",
    show_default=True,
    metavar="URL",
    help="Spark master for --engine spark ($SPARK_REMOTE, where set, uses Spark Connect instead).",
)
@click.option(
    "--batch-api",
    is_flag=True,
    help="Through OpenAI's Batch API, at half the price: rows run in rounds, their requests submitted "
    "as batches, polled, recorded into the cassette (answers within 24 h).",
)
@click.option(
    "--batch-fallback",
    type=click.Choice(["next-round", "live"]),
    default=None,
    help="Requests a batch did not answer (expired, failed): submitted again next round (default), "
    "or sent live.",
)
@click.option(
    "--dry-run", is_flag=True, help="With --batch-api: the first round's requests and cost; send nothing."
)
@json_option
@click.pass_obj
@reports_errors
def eval_command(
    obj: Context,
    chain: str | None,
    data: Path | None,
    model_uri: str | None,
    every: bool,
    concurrency: int | None,
    record_mode: str | None,
    resume: str | None,
    scorers: tuple[str, ...],
    aggregations: str,
    prices: Path | None,
    cassette: Path | None,
    allow_hosts: tuple[str, ...],
    tracking_uri: str | None,
    trace: bool,
    experiment: str | None,
    run_name: str | None,
    engine: str,
    workers: int | None,
    spark_master: str,
    batch_api: bool,
    batch_fallback: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Evaluate CHAIN over a dataset: each row run, scored, and the results logged to MLflow."""
    from toolkit.evaluation import DEFAULT_CONCURRENCY, DEFAULT_PRICES, EvalOptions, datasets_for, evaluate

    project = obj.project
    if every:
        jobs = list(datasets_for(project).items())
        if not jobs:
            raise UsageError(f"no datasets under {project.datasets_dir}: add datasets/CHAIN.jsonl")
    elif chain or model_uri:
        path = data or (project.datasets_dir / f"{chain}.jsonl" if chain else None)
        if path is None:
            raise UsageError("--model-uri needs --data FILE")
        jobs = [(chain or "", path)]
    else:
        raise UsageError("name a CHAIN, pass --model-uri URI, or --all")
    table_prices = dict(DEFAULT_PRICES)
    if prices is not None:
        try:
            table_prices.update(
                {k: (float(v[0]), float(v[1])) for k, v in json.loads(prices.read_text()).items()}
            )
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise UsageError(
                f'{prices}: expected {{"model": [input_usd, output_usd]}} per million tokens'
            ) from exc
    from toolkit.batch_plan import plan_batches
    from toolkit.batch_rounds import batch_options

    batch = batch_options(batch_api, batch_fallback, dry_run, report=lambda line: click.echo(line, err=True))
    if dry_run:  # nothing sent, no run started
        plans = plan_batches(project, jobs, table_prices, allow_hosts, cassette)
        if as_json:
            emit_json({"plans": [plan.to_json() for plan in plans]})
        else:
            click.echo("\n".join(line for plan in plans for line in plan.lines()))
        return
    summaries = []
    for name, path in jobs:
        label = name or str(model_uri)
        started: list[str] = []

        def on_start(run_id: str, label: str = label, started: list[str] = started) -> None:
            started.append(run_id)
            click.echo(f"{label}: run {run_id} {'resumed' if resume else 'started'}", err=True)

        options = EvalOptions(
            data=path,
            concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
            record_mode=record_mode,
            resume=resume,
            scorers=scorers,
            aggregations=[a.strip() for a in aggregations.split(",") if a.strip()],
            prices=table_prices,
            tracking_uri=tracking_uri,
            allow_hosts=allow_hosts,
            trace=trace,
            experiment=experiment,
            run_name=f"{run_name}-{label}" if run_name and len(jobs) > 1 else run_name,
            engine=engine,
            workers=workers,
            spark_master=spark_master,
            batch=batch,
            progress=not as_json and sys.stderr.isatty(),
            on_start=on_start,
        )
        try:
            summaries.append(
                evaluate(project, options, chain=name or None, model_uri=model_uri, cassette=cassette)
            )
        except KeyboardInterrupt:
            target = f"chainkit eval {name}" if name else f"chainkit eval --model-uri {model_uri}"
            finish = f"{target} --resume {started[0]}" if started else "nothing was started"
            click.echo(f"\ninterrupted: every finished row is saved; finish it with: {finish}", err=True)
            obj_exit(130)
    if as_json:
        emit_json({"runs": [summary.to_json() for summary in summaries]})
    else:
        for summary in summaries:
            scorer_errors = summary.scorer_errors and f", {plural(summary.scorer_errors, 'scorer error')}"
            click.echo(
                f"{summary.chain}: run {summary.run_id}: {plural(summary.rows, 'row')}, "
                f"{plural(summary.errors, 'error')}{scorer_errors or ''}, {summary.replayed_rows} replayed, "
                f"{summary.live_rows} live, {plural(summary.tokens, 'token')}, "
                f"~${summary.cost_usd:.4f}, {summary.seconds:.1f}s"
            )
            rows = [[name, number(value)] for name, value in sorted(summary.metrics.items())]
            click.echo(table(["metric", "value"], rows))
    for summary in summaries:  # on stderr, --json or not: what went wrong, first few
        from toolkit.eval_results import describe_failures

        for failure in summary.failures if obj.debug else ():
            if failure.traceback:
                click.echo(failure.traceback.rstrip(), err=True)
        for line in describe_failures(summary.failures, summary.failures_not_shown):
            click.echo(f"error: {summary.chain}: {line}", err=True)
    if not all(summary.ok for summary in summaries):
        obj_exit(1)


# -------------------------------------------------------------------------------- cassette


@cli.group()
def cassette() -> None:
    """Inspect, check and prune cassette files."""


@cassette.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@reports_errors
def cassette_show(path: Path, as_json: bool) -> None:
    """A table of PATH's interactions: endpoint, model, prompt, status, streamed, used."""
    from toolkit.audit import HEADERS, rows
    from toolkit.cassette import Cassette
    from toolkit.errors import CassetteError

    loaded = Cassette.load(path)
    if not loaded.exists:
        raise CassetteError(f"{path}: no such cassette; record it with --record-mode once")
    found = rows(loaded)
    if as_json:
        emit_json(
            {
                "path": str(path),
                "recorded_with": loaded.recorded_with,
                "interactions": [row.__dict__ for row in found],
            }
        )
        return
    click.echo(table(HEADERS, [row.cells() for row in found]))
    versions = ", ".join(f"{k} {v}" for k, v in loaded.recorded_with.items())
    click.echo(f"{len(found)} interactions in {path}" + (f"; recorded with {versions}" if versions else ""))


@cassette.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
@reports_errors
def cassette_check(paths: tuple[Path, ...], as_json: bool) -> None:
    """Validate cassettes: they load, hold no secrets; report recordings no replay used."""
    from toolkit.audit import check

    reports = [check(path) for path in paths]
    if as_json:
        emit_json(
            [
                {
                    "path": str(r.path),
                    "ok": r.ok,
                    "interactions": r.interactions,
                    "problems": r.problems,
                    "notes": r.notes(),
                    "error_answers": [{"index": n, "status": status} for n, status in r.error_answers],
                    "unused": r.unused,
                }
                for r in reports
            ]
        )
    else:
        for report in reports:
            for problem in report.problems:
                click.echo(f"problem: {problem}", err=True)
            for note in report.notes():
                click.echo(f"note: {note}", err=True)
            if report.ok:
                unused = (
                    "unused: unknown (no replay run since it last changed)"
                    if report.unused is None
                    else f"unused: {len(report.unused)}"
                    + (f" (#{', #'.join(map(str, report.unused))})" if report.unused else "")
                )
                click.echo(f"ok: {report.path}: {report.interactions} interactions; {unused}")
    if not all(report.ok for report in reports):
        obj_exit(1)


@cassette.command("prune")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@reports_errors
def cassette_prune(path: Path) -> None:
    """Drop the interactions that no replay used since PATH last changed."""
    from toolkit.audit import prune

    kept, dropped = prune(path)
    click.echo(f"{path}: kept {kept}, dropped {dropped} unused interactions")


@cassette.command("import")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--into", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default: cassettes/."
)
@click.option(
    "--other-hosts",
    type=click.Choice(["keep", "drop"]),
    default="keep",
    show_default=True,
    help="Traffic that is not the OpenAI API (telemetry, package indexes): keep it or drop it.",
)
@click.option("--report", is_flag=True, help="List every interaction: kept, dropped, redacted, and why.")
@click.option("--dry-run", is_flag=True, help="Report only; write nothing.")
@json_option
@click.pass_obj
@reports_errors
def cassette_import(
    obj: Context,
    sources: tuple[Path, ...],
    into: Path | None,
    other_hosts: str,
    report: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Import vcrpy / pytest-recording cassettes (YAML or JSON) as DIR/<name>.json.

    An existing cassette of that name is merged into, never overwritten.
    """
    from toolkit.vcr_import import import_cassettes

    reports = import_cassettes(
        sources, into or obj.project.cassettes_dir, other_hosts=other_hosts, dry_run=dry_run
    )
    if as_json:
        emit_json([r.to_json() for r in reports])
        return
    for result in reports:
        click.echo(result.summary())
        for note in result.interactions if report else ():
            click.echo(f"  #{note.index} {note.outcome.value}: {note.method} {note.url} ({note.status})")
            for line in note.notes:
                click.echo(f"      {line}")


# ----------------------------------------------------------------------------------- proxy


@cli.command("proxy")
@click.argument("cassettes", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port.")
@record_mode_option
@click.option(
    "--upstream",
    default=None,
    metavar="URL",
    help="Where live requests go in record modes (default: $CHAINKIT_RECORD_VIA, else api.openai.com).",
)
@reports_errors
def proxy_command(
    cassettes: tuple[Path, ...], host: str, port: int, record_mode: str | None, upstream: str | None
) -> None:
    """Serve CASSETTES to any OpenAI client: OPENAI_BASE_URL=<the URL printed on stdout>.

    Several cassettes each answer what they hold; new recordings go into the last. Stops
    gracefully on Ctrl-C or SIGTERM, recordings saved.
    """
    from toolkit.proxy import serve

    mode = RecordMode.parse(record_mode)

    def ready(url: str) -> None:
        click.echo(url)  # stdout holds this one line: scripts wait for it
        names = ", ".join(map(str, cassettes))
        click.echo(f"chainkit proxy: {names} (record mode {mode.value}) at {url}; Ctrl-C stops", err=True)

    sessions = serve(cassettes, host=host, port=port, record_mode=mode, upstream=upstream, on_ready=ready)
    for session in sessions:
        click.echo(
            f"chainkit proxy: {session.path}: {session.replayed} replayed, {len(session.new)} recorded",
            err=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="chainkit")
