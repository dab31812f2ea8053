"""Helpers shared by the example chains (logged with them as MLflow code_paths)."""
