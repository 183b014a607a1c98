"""Evaluation: metrics and the independent reference models they are compared with."""
