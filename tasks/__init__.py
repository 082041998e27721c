"""Thin Prefect tasks: each does its I/O through a pure function of `batchscore` and returns
paths, counts and small summaries, never DataFrames."""
