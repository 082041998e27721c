"""Prefect flows: the orchestration (what runs, in which order, on which runner)."""

from batchscore.prefect_api import (
    build_task_settings_once,
    end_flow_runs_without_waiting_for_heartbeats,
    look_up_block_classes_before_loading_collections,
    reuse_tls_contexts,
    serialize_plain_parameters_without_fastapi,
)

end_flow_runs_without_waiting_for_heartbeats()
reuse_tls_contexts()
build_task_settings_once()
look_up_block_classes_before_loading_collections()
serialize_plain_parameters_without_fastapi()
