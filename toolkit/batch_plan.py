"""What a Batch API job costs: batch prices per model, and ``--dry-run``'s plan.

Batch rates are half the live ones (a table entry per model and mode: ``DEFAULT_PRICES`` in
:mod:`toolkit.evaluation` for live, ``DEFAULT_BATCH_PRICES`` here for batch). ``--dry-run``
runs the first round of :mod:`toolkit.batch_rounds` without sending anything: every row once,
with the cassette deferring what it does not hold, and the deferred requests counted per
endpoint and model and priced both ways.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.attempt import RowTask, attempt_row
from toolkit.batch_api import API_HOST, batch_endpoint
from toolkit.batch_rounds import Costs, Deferrals, DeferringEngine
from toolkit.datasets import read_rows
from toolkit.errors import UsageError
from toolkit.project import Project

if TYPE_CHECKING:
    from toolkit.evaluation import EvalOptions

#: USD per million tokens (input, output) at Batch API rates: half the live ones
#: (toolkit.evaluation.DEFAULT_PRICES), per OpenAI's pricing page. A model priced only by the
#: user (--prices) is batched at half its live price.
DEFAULT_BATCH_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.075, 0.30),
    "gpt-4o": (1.25, 5.00),
    "gpt-4.1-mini": (0.20, 0.80),
    "gpt-4.1": (1.00, 4.00),
    "gpt-3.5-turbo-instruct": (0.75, 1.00),
    "text-embedding-3-small": (0.01, 0.0),
    "text-embedding-3-large": (0.065, 0.0),
}
BATCH_DISCOUNT = 0.5
#: Output tokens assumed per chat/responses request by --dry-run when the request sets no limit.
DRY_RUN_OUTPUT_TOKENS = 256


def batch_prices(live: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The batch price of every model of the live table: the batch table's entry when the live
    price is the default one, else the discount applied to the live price."""
    from toolkit.evaluation import DEFAULT_PRICES

    out = {}
    for model, (price_in, price_out) in live.items():
        if model in DEFAULT_BATCH_PRICES and DEFAULT_PRICES.get(model) == (price_in, price_out):
            out[model] = DEFAULT_BATCH_PRICES[model]
        else:
            out[model] = (price_in * BATCH_DISCOUNT, price_out * BATCH_DISCOUNT)
    return out


# ------------------------------------------------------------------------------ --dry-run


@dataclass
class DryRun:
    """The first round's requests and what they would cost, nothing sent."""

    chain: str
    rows: int
    pending_rows: int
    requests: int  # distinct requests to submit
    #: (endpoint, model) -> [requests, estimated input tokens, estimated output tokens]
    by_model: dict[tuple[str, str], list[int]]
    cost_live: float
    cost_batch: float

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "rows": self.rows,
            "pending_rows": self.pending_rows,
            "requests": self.requests,
            "by_model": [
                {"endpoint": e, "model": m, "requests": n, "input_tokens": i, "output_tokens": o}
                for (e, m), (n, i, o) in sorted(self.by_model.items())
            ],
            "cost_usd_live": round(self.cost_live, 6),
            "cost_usd_batch": round(self.cost_batch, 6),
        }

    def lines(self) -> list[str]:
        """The plan as text: one line per endpoint and model, then the totals."""
        out = [
            f"{self.chain}: {self.rows} rows, {self.pending_rows} waiting for {self.requests} distinct "
            "requests in the first round (nothing sent)"
        ]
        for (endpoint, model), (count, tokens_in, tokens_out) in sorted(self.by_model.items()):
            out.append(
                f"  {endpoint} {model}: {count} requests, ~{tokens_in} input / ~{tokens_out} output tokens"
            )
        out.append(
            f"  estimated cost: ~${self.cost_live:.4f} live, ~${self.cost_batch:.4f} through the Batch API"
        )
        return out


def plan_batches(
    project: Project,
    jobs: Sequence[tuple[str, Path]],
    prices: Mapping[str, tuple[float, float]],
    allow_hosts: Sequence[str] = (),
    cassette: Path | None = None,
) -> list[DryRun]:
    """``--dry-run`` for each (chain, dataset) job."""
    from toolkit.evaluation import EvalOptions

    plans = []
    for chain, data in jobs:
        if not chain:
            raise UsageError("--dry-run needs a CHAIN (or --all), not --model-uri")
        options = EvalOptions(data=data, prices=dict(prices), allow_hosts=allow_hosts)
        plans.append(dry_run(project, options, chain, cassette))
    return plans


def dry_run(project: Project, options: EvalOptions, chain: str, cassette: Path | None = None) -> DryRun:
    """Run every row once with the cassette deferring what it does not hold; count the
    deferred requests per endpoint and model and price them (tokens estimated from the text:
    ~4 characters a token; output at the request's limit, else DRY_RUN_OUTPUT_TOKENS)."""
    from toolkit.discovery import Flavor, discover
    from toolkit.evaluation import row_scopes
    from toolkit.replay import use_cassette
    from toolkit.targets import ChainLoader

    spec = discover(project.chains_dir).get(chain)
    path = cassette or project.cassette_for(chain)
    deferrals = Deferrals(API_HOST.split(), {})
    rows = pending = 0
    with use_cassette(
        path,
        "none",
        allow_hosts=options.allow_hosts,
        ignore_json_paths=project.ignore_json_paths,
        defer=deferrals,
    ):
        loader = ChainLoader(
            spec.name, project.chains_dir, spec.path, spec.model_config, spec.flavor is Flavor.PYFUNC
        )
        try:
            invoke = loader()
        except Exception:
            if not deferrals.outside_rows:
                raise
            invoke = None  # loading waits for a batch: the rows' requests are not known yet
        # The engine's invoke: a deferred row ends without formatting the chain's traceback.
        engine = DeferringEngine(invoke, deferrals, Costs({}, {}), inline=True) if invoke else None
        for row, scope in row_scopes(read_rows(options.data)):
            rows += 1
            if engine is not None:
                attempt_row(engine.invoke, RowTask(row.index, row.inputs, scope))
                pending += scope in deferrals.scopes
    if deferrals.streamed is not None:
        raise UsageError(
            f"chain {chain} streams its calls ({deferrals.streamed.url} has stream: true): the Batch API "
            "answers whole bodies; evaluate it without --batch-api"
        )
    live = options.prices
    batch = batch_prices(live)
    by_model: dict[tuple[str, str], list[int]] = {}
    cost_live = cost_batch = 0.0
    for request in deferrals.requests.values():
        body = request.body.get("json") or {}
        endpoint = batch_endpoint(request) or "?"
        model = str(body.get("model", ""))
        tokens_in = math.ceil(
            len(_text_of(body.get("messages", body.get("input", body.get("prompt", ""))))) / 4
        )
        if endpoint.endswith("embeddings"):
            tokens_out = 0
        else:
            limit = (
                body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
            )
            tokens_out = int(limit) if isinstance(limit, int) else DRY_RUN_OUTPUT_TOKENS
        entry = by_model.setdefault((endpoint, model), [0, 0, 0])
        entry[0] += 1
        entry[1] += tokens_in
        entry[2] += tokens_out
        cost_live += _price(live, model, tokens_in, tokens_out)
        cost_batch += _price(batch, model, tokens_in, tokens_out)
    return DryRun(chain, rows, pending, len(deferrals.requests), by_model, cost_live, cost_batch)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(item) for item in value)
    if isinstance(value, dict):
        return "".join(_text_of(v) for k, v in value.items() if k in ("content", "text", "input"))
    return json.dumps(value) if value is not None else ""


def _price(prices: Mapping[str, tuple[float, float]], model: str, tokens_in: int, tokens_out: int) -> float:
    name = next((name for name in sorted(prices, key=len, reverse=True) if model.startswith(name)), None)
    if name is None:
        return 0.0
    price_in, price_out = prices[name]
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


__all__ = [
    "BATCH_DISCOUNT",
    "DEFAULT_BATCH_PRICES",
    "DRY_RUN_OUTPUT_TOKENS",
    "DryRun",
    "batch_prices",
    "dry_run",
    "plan_batches",
]
