"""render-k8s: the TFJob manifest, and the TF_CONFIG the Training Operator
would build from it matches the spec's topology."""
import json
import os
import subprocess
import sys

import pytest

from launch import k8s
from launch import spec as spec_lib
from ps_sync.local_cluster import REPO_ROOT
from ps_sync.server import parse_tf_config

SPECS = os.path.join(REPO_ROOT, "cluster_specs")


def operator_tf_config(manifest, replica_type, index, cluster_domain=""):
    """TF_CONFIG as kubeflow/training-operator writes it for one replica
    (pkg/controller.v1/tensorflow/tensorflow.go, genClusterSpec and
    genTFConfigJSONStr; util.go GetPortFromTFJob): job names are the
    lower-cased replica types; hosts "<name>-<type>-<i>.<namespace>.svc"
    (plus "." + CUSTOM_CLUSTER_DOMAIN when set); the port is that of the
    container "tensorflow" named "tfjob-port", else 2222; evaluators are not
    part of the training cluster."""
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace", "default")
    cluster = {}
    for rtype, replica in manifest["spec"]["tfReplicaSpecs"].items():
        if rtype == "Evaluator":
            continue
        port = 2222
        for container in replica["template"]["spec"]["containers"]:
            if container["name"] == "tensorflow":
                for p in container.get("ports", []):
                    if p["name"] == "tfjob-port":
                        port = p["containerPort"]
        rt = rtype.lower()
        hosts = []
        for i in range(replica["replicas"]):
            svc = "%s-%s-%d.%s.svc" % (name, rt, i, namespace)
            if cluster_domain:
                svc += "." + cluster_domain
            hosts.append("%s:%d" % (svc, port))
        cluster[rt] = hosts
    return {"cluster": cluster,
            "task": {"type": replica_type.lower(), "index": index},
            "environment": "cloud"}


@pytest.mark.parametrize("file", ["local_default.json",
                                  "inception_50_plus_4.json",
                                  "inception_96_plus_4.json",
                                  "inception_200_plus_10.json"])
def test_operator_tf_config_matches_spec_topology(file):
    spec = spec_lib.load(os.path.join(SPECS, file))
    manifest = k8s.render_tfjob(spec)
    assert manifest["apiVersion"] == "kubeflow.org/v1"
    assert manifest["kind"] == "TFJob"
    replicas = manifest["spec"]["tfReplicaSpecs"]
    assert {r: replicas[r]["replicas"] for r in replicas} == {
        "Chief": 1, "PS": spec.counts["ps"], "Worker": spec.counts["worker"]}
    for rtype, replica in replicas.items():
        for index in (0, replica["replicas"] - 1):
            config = operator_tf_config(manifest, rtype, index)
            cluster = config["cluster"]
            assert {job: len(hosts) for job, hosts in cluster.items()} == {
                "chief": 1, "ps": spec.counts["ps"],
                "worker": spec.counts["worker"]}
            assert cluster["worker"][index if rtype == "Worker" else 0] == (
                "%s-worker-%d.default.svc:2222"
                % (spec.name, index if rtype == "Worker" else 0))
            if rtype in ("PS", "Worker"):
                # What each server pod runs accepts the operator's TF_CONFIG.
                assert parse_tf_config(json.dumps(config)) == (
                    cluster, rtype.lower(), index)


def test_manifest_carries_image_command_sync_settings_and_policies():
    spec = spec_lib.load(os.path.join(SPECS, "inception_96_plus_4.json"))
    manifest = k8s.render_tfjob(spec, ["--epochs=3"], image="reg/ps:1")
    replicas = manifest["spec"]["tfReplicaSpecs"]
    chief = replicas["Chief"]["template"]["spec"]["containers"][0]
    assert chief["image"] == "reg/ps:1"
    assert chief["command"] == [
        "python", "-m", "models.train", "--model=inception_v3",
        "--dataset=imagenet2012", "--data_dir=/data/imagenet",
        "--batch_size=32", "--replicas_to_aggregate=96",
        "--total_num_replicas=100", "--epochs=3"]
    worker = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert worker["command"] == ["python", "-m", "ps_sync.server"]
    assert worker["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["GRPC_FAIL_FAST"] == "use_caller"
    assert "grpc.keepalive_time_ms=" in env["TF_GRPC_DEFAULT_OPTIONS"]
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert worker["resources"] == {"requests": {"cpu": "8", "memory": "16Gi"}}
    assert replicas["Chief"]["restartPolicy"] == "ExitCode"
    assert replicas["PS"]["restartPolicy"] == "OnFailure"
    assert manifest["spec"]["runPolicy"] == {"cleanPodPolicy": "Running",
                                             "backoffLimit": 10}
    assert manifest["metadata"]["annotations"] == {
        "ps-sync/replicas-to-aggregate": "96", "ps-sync/backup-workers": "4"}


def test_evaluator_is_outside_the_training_cluster(tmp_path):
    raw = json.load(open(os.path.join(SPECS, "local_default.json")))
    raw["cluster"]["evaluator"] = 1
    raw.pop("stragglers")
    path = tmp_path / "with_eval.json"
    path.write_text(json.dumps(raw))
    manifest = k8s.render_tfjob(spec_lib.load(str(path)))
    assert manifest["spec"]["tfReplicaSpecs"]["Evaluator"]["replicas"] == 1
    config = operator_tf_config(manifest, "Evaluator", 0)
    assert sorted(config["cluster"]) == ["chief", "ps", "worker"]


def test_per_task_env_cannot_be_rendered(tmp_path):
    raw = json.load(open(os.path.join(SPECS, "local_default.json")))
    raw["env"] = {"worker-1": {"A": "1"}}
    path = tmp_path / "per_task.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(spec_lib.SpecError) as info:
        k8s.render_tfjob(spec_lib.load(str(path)))
    assert "field env.worker-1: expected only \"all\" or job names" in str(
        info.value)


@pytest.mark.timeout(60)
def test_cli_writes_the_manifest(tmp_path):
    out = tmp_path / "tfjob.json"
    proc = subprocess.run(
        [sys.executable, "-m", "launch", "render-k8s",
         os.path.join(SPECS, "inception_50_plus_4.json"), "-o", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=50,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 54
