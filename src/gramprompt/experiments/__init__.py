"""Experiment configs (YAML), their expansion into jobs, the runner and the paper-layout tables."""
