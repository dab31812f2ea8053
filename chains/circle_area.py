"""The area of circles from their radii: the MLflow docs' CircleAreaModel, a PythonModel from code."""

import math

import mlflow
from mlflow.pyfunc import PythonModel

INPUT_EXAMPLE = [1.0, 2.0, 3.0]


class CircleAreaModel(PythonModel):
    def predict(self, model_input: list[float], params: dict | None = None) -> list[float]:
        return [math.pi * (r**2) for r in model_input]


mlflow.models.set_model(CircleAreaModel())
