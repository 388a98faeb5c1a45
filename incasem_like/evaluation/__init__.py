"""Metrics and the evaluate command's scoring."""
