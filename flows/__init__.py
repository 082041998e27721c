"""Prefect flows: the orchestration (what runs, in which order, on which runner)."""

from batchscore.prefect_api import end_flow_runs_without_waiting_for_heartbeats, reuse_tls_contexts

end_flow_runs_without_waiting_for_heartbeats()
reuse_tls_contexts()
