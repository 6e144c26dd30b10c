"""Evaluation: novelty scores on shared features, metrics, reports and the CLI."""
