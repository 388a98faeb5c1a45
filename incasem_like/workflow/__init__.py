"""Pipelines of stages (pipeline files) and the demo."""
