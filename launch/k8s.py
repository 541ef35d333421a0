"""`render-k8s`: a Kubeflow TFJob manifest (kubeflow.org/v1, Training
Operator) for a spec.

The operator creates one pod and one headless service per replica and writes
each pod's TF_CONFIG itself: job names are the lower-cased replica types,
hosts `<job-name>-<type>-<index>.<namespace>.svc`, the port that of the
container named "tensorflow" whose port is named "tfjob-port" (default 2222),
and evaluators are left out of the training cluster. So the manifest carries
counts, not addresses; counts given as address lists are taken by length.

Restart rules map onto replica restart policies: workers and parameter
servers `OnFailure` (a worker restarts alone); the chief `ExitCode`, which
restarts it on exit codes 128-255 (killed by a signal, or a program that
exits that way after losing its parameter servers) and fails the job on
1-127. `runPolicy.backoffLimit` bounds restarts; `cleanPodPolicy: Running`
deletes the servers once the chief has finished, so parameter servers never
outlive the job. Straggler injection is local-only.
"""
import json

from launch.spec import JOBS, SpecError

REPLICA_TYPES = {"chief": "Chief", "ps": "PS", "worker": "Worker",
                 "evaluator": "Evaluator"}
CONTAINER_NAME = "tensorflow"  # the operator's DefaultContainerName
PORT_NAME = "tfjob-port"       # the operator's DefaultPortName
SERVER_COMMAND = ["python", "-m", "ps_sync.server"]


def render_tfjob(spec, extra_args=(), image=None):
    """The TFJob manifest for `spec`, as a dict."""
    k8s = spec.kubernetes
    for key in spec.env:
        if key != "all" and key not in JOBS:
            raise SpecError(spec.path, "env." + key, "only \"all\" or job "
                            "names for render-k8s (a TFJob has one pod "
                            "template per job, not per task), got %s"
                            % json.dumps(key))
    program = spec.program_argv(extra_args, local=False)
    replicas = {}
    for job in JOBS:
        count = spec.counts[job]
        if not count:
            continue
        command = SERVER_COMMAND if job in ("ps", "worker") else program
        policy = "ExitCode" if job == "chief" else "OnFailure"
        replicas[REPLICA_TYPES[job]] = {
            "replicas": count,
            "restartPolicy": policy,
            "template": {"spec": {"containers": [
                _container(spec, job, command, image or k8s["image"])]}},
        }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {
            "name": spec.name,
            "namespace": k8s["namespace"],
            "labels": {"app.kubernetes.io/part-of": "ps-sync"},
            "annotations": {
                "ps-sync/replicas-to-aggregate": str(spec.replicas_to_aggregate),
                "ps-sync/backup-workers": str(spec.backup_workers),
            },
        },
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running",
                          "backoffLimit": spec.max_restarts},
            "tfReplicaSpecs": replicas,
        },
    }


def _container(spec, job, command, image):
    from ps_sync.local_cluster import DEFAULT_GRPC_OPTIONS, grpc_options_env
    env = {
        "GRPC_FAIL_FAST": "use_caller",
        "TF_GRPC_DEFAULT_OPTIONS": grpc_options_env(
            dict(DEFAULT_GRPC_OPTIONS, **spec.local["grpc_options"])),
        "TF_USE_LEGACY_KERAS": "1",
        "PYTHONUNBUFFERED": "1",
        "PS_SYNC_RUN_DIR": spec.kubernetes["run_dir"],
    }
    env.update(spec.env.get("all", {}))
    env.update(spec.env.get(job, {}))
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": list(command),
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": PORT_NAME,
                   "containerPort": spec.kubernetes["port"]}],
    }
    resources = spec.kubernetes["resources"].get(job)
    if resources:
        container["resources"] = resources
    return container


def dumps(manifest):
    """JSON text; JSON is YAML, so `kubectl apply -f` takes it as is."""
    return json.dumps(manifest, indent=2) + "\n"
