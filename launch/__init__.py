"""Start a whole ps_sync cluster from a cluster-spec JSON file.

    python -m launch [cluster_specs/<spec>.json] [-- <program flags>]
    python -m launch render-k8s cluster_specs/<spec>.json [-o tfjob.json]
    python -m launch validate cluster_specs/<spec>.json

Modules: `spec` (load and validate), `schema` (the JSON Schema subset
checker), `local` (local mode: restart rules on top of
ps_sync.local_cluster), `stragglers` (pause injection), `k8s` (TFJob).
"""
