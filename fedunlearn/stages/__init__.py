"""Stages: readers of a finished run directory (never Flower, Ray or the FL phases): inference, the audit and its
summary and verdicts, RMIA's instruments, the A2 seed audit over saved replicas, plots and the report."""
