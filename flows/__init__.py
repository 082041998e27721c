"""Prefect flows: the orchestration (what runs, in which order, on which runner)."""
