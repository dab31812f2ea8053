"""Customer lifetime value: three sub-models (retention, frequency, order value) combined in one chain."""

from pathlib import Path

import mlflow
from langchain_core.runnables import RunnableLambda, RunnableParallel

INPUT_EXAMPLE = {"tenure_months": 14, "orders_last_year": 6, "spend_last_year": 420.0, "support_tickets": 1}

# Coefficients live in clv.yaml (logged as the model_config); this path is the development copy.
config = mlflow.models.ModelConfig(development_config=str(Path(__file__).with_name("clv.yaml")))
retention_config = config.get("retention")
horizon_years = float(config.get("horizon_years"))


def retention(customer: dict) -> float:
    """Probability the customer is still buying next year."""
    score = (
        retention_config["base"]
        + retention_config["per_tenure_month"] * customer["tenure_months"]
        - retention_config["per_support_ticket"] * customer["support_tickets"]
    )
    return round(min(max(score, 0.0), 0.99), 4)


def purchase_frequency(customer: dict) -> float:
    """Expected orders per year."""
    return round(float(customer["orders_last_year"]) * float(config.get("frequency_trend")), 2)


def average_order_value(customer: dict) -> float:
    orders = max(int(customer["orders_last_year"]), 1)
    return round(float(customer["spend_last_year"]) / orders, 2)


def lifetime_value(parts: dict) -> dict:
    """Sum of expected yearly value over the horizon, discounted by retention each year."""
    yearly = parts["purchase_frequency"] * parts["average_order_value"]
    value = sum(yearly * parts["retention"] ** year for year in range(1, int(horizon_years) + 1))
    return {**parts, "clv": round(value, 2)}


chain = RunnableParallel(
    retention=RunnableLambda(retention),
    purchase_frequency=RunnableLambda(purchase_frequency),
    average_order_value=RunnableLambda(average_order_value),
) | RunnableLambda(lifetime_value)

mlflow.models.set_model(chain)
