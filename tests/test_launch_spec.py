"""Cluster-spec validation: every bad spec is refused with one paragraph
naming the file, the field and what was expected (no processes started)."""
import copy
import glob
import json
import os
import socket
import subprocess
import sys

import portpicker
import pytest

from launch import schema as schema_lib
from launch import spec as spec_lib
from launch.__main__ import main
from ps_sync.local_cluster import REPO_ROOT
from tests.test_server import without_tf_log

GOOD = {
    "cluster": {"chief": 1, "ps": 1, "worker": 3},
    "sync": {"replicas_to_aggregate": 2, "backup_workers": 1},
    "program": {"command": ["python", "-m", "models.train"]},
}


def _write(tmp_path, spec, name="spec.json"):
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return str(path)


def _with(change):
    spec = copy.deepcopy(GOOD)
    change(spec)
    return spec


def _set(path, value):
    def change(spec):
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return _with(change)


def _drop(*path):
    def change(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return _with(change)


BAD_SPECS = [
    # (id, spec, field named, expected text)
    ("malformed-json", '{\n  "cluster": {"chief": 1,}\n}', None,
     "expected valid JSON, but line 2, column 26: Expecting property name"),
    ("not-an-object", "[1, 2]", "(top level)", "an object, got [1, 2]"),
    ("missing-cluster", _drop("cluster"), "cluster", "this required field"),
    ("missing-job", _drop("cluster", "ps"), "cluster.ps", "this required field"),
    ("two-chiefs", _set(("cluster", "chief"), 2), "cluster.chief",
     "exactly 1 task(s), got 2"),
    ("no-workers", _set(("cluster", "worker"), 0), "cluster.worker",
     "at least 1 task(s), got 0"),
    ("job-wrong-type", _set(("cluster", "worker"), "3"), "cluster.worker",
     'an integer or a list, got "3"'),
    ("negative-count", _set(("cluster", "ps"), -1), "cluster.ps",
     "a number >= 0, got -1"),
    ("bad-address", _set(("cluster", "ps"), ["127.0.0.1"]), "cluster.ps[0]",
     '"host:port" with a port from 1 to 65535'),
    ("bad-port", _set(("cluster", "ps"), ["127.0.0.1:70000"]),
     "cluster.ps[0]", 'got "127.0.0.1:70000"'),
    ("bad-host", _set(("cluster", "ps"), ["my host:2222"]), "cluster.ps[0]",
     'got "my host:2222"'),
    ("duplicate-address",
     _with(lambda s: s["cluster"].update(
         ps=["127.0.0.1:2300"], worker=["127.0.0.1:2301", "localhost:2300",
                                        "127.0.0.1:2302"])),
     "cluster.worker[1]",
     "an address used by one task only, but localhost:2300 is also "
     "cluster.ps[0]"),
    ("n-above-workers", _set(("sync", "replicas_to_aggregate"), 4),
     "sync.replicas_to_aggregate",
     "an integer from 1 to the number of workers (3), got 4"),
    ("n-below-1", _set(("sync", "replicas_to_aggregate"), 0),
     "sync.replicas_to_aggregate", "a number >= 1, got 0"),
    ("backups-disagree", _set(("sync", "backup_workers"), 2),
     "sync.backup_workers", "1 (cluster.worker has 3 workers and "
     "replicas_to_aggregate is 2), got 2"),
    ("unknown-top-key", _set(("stragglerz",), []), "stragglerz",
     'no such key', ),
    ("unknown-sync-key", _set(("sync", "replica_to_aggregate"), 2),
     "sync.replica_to_aggregate", "no such key"),
    ("empty-command", _set(("program", "command"), []), "program.command",
     "a list of at least 1 item(s)"),
    ("env-unknown-task", _set(("env", "worker-7"), {"A": "1"}), "env.worker-7",
     '"all", a job name or an existing task'),
    ("env-not-string", _set(("env", "all"), {"A": 1}), "env.all.A",
     "a string, got 1"),
    ("straggler-missing-worker",
     _set(("stragglers",), [{"task": "worker-3",
                             "every_s": {"distribution": "fixed", "value": 1},
                             "pause_s": {"distribution": "fixed", "value": 1}}]),
     "stragglers[0].task", "an existing worker (worker-0 to worker-2)"),
    ("straggler-bad-distribution",
     _set(("stragglers",), [{"task": "worker-0",
                             "every_s": {"distribution": "gaussian"},
                             "pause_s": {"distribution": "fixed", "value": 1}}]),
     "stragglers[0].every_s.distribution",
     'one of "fixed", "uniform", "exponential", "lognormal", got "gaussian"'),
    ("straggler-missing-param",
     _set(("stragglers",), [{"task": "worker-0",
                             "every_s": {"distribution": "exponential"},
                             "pause_s": {"distribution": "fixed", "value": 1}}]),
     "stragglers[0].every_s.mean",
     "a number (the exponential distribution takes mean)"),
    ("straggler-wrong-param",
     _set(("stragglers",), [{"task": "worker-0",
                             "every_s": {"distribution": "fixed", "value": 1},
                             "pause_s": {"distribution": "fixed", "mean": 1}}]),
     "stragglers[0].pause_s.mean",
     "no such parameter for the fixed distribution, which takes value"),
    ("straggler-zero-interval",
     _set(("stragglers",), [{"task": "worker-0",
                             "every_s": {"distribution": "fixed", "value": 0},
                             "pause_s": {"distribution": "fixed", "value": 1}}]),
     "stragglers[0].every_s.value", "a number > 0"),
    ("restart-negative", _set(("restart", "max_restarts"), -1),
     "restart.max_restarts", "a number >= 0, got -1"),
]


@pytest.mark.parametrize("name, spec, field, expected", BAD_SPECS,
                         ids=[case[0] for case in BAD_SPECS])
def test_bad_spec_is_refused_naming_file_and_field(tmp_path, name, spec,
                                                   field, expected):
    path = _write(tmp_path, spec)
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.load(path)
    message = str(info.value)
    assert message.startswith(path + ": ")
    if field:
        assert message.startswith("%s: field %s: expected " % (path, field))
    assert expected in message
    assert "\n" not in message  # one paragraph


def test_unknown_key_suggests_the_closest(tmp_path):
    path = _write(tmp_path, _set(("sync", "replica_to_aggregate"), 2))
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.load(path)
    assert 'Hint: did you mean "replicas_to_aggregate"?' in str(info.value)
    assert "known keys here are: backup_workers, replicas_to_aggregate" in str(
        info.value)


def test_missing_file_is_refused(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.load(path)
    assert str(info.value).startswith(
        path + ": expected a readable cluster-spec JSON file, but it cannot be "
        "read (No such file or directory)")


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = spec_lib.load(_write(tmp_path, _set(
            ("cluster", "ps"), ["127.0.0.1:%d" % port])))
        with pytest.raises(spec_lib.SpecError) as info:
            spec_lib.check_local(spec)
    assert "field cluster.ps[0]: expected a free port, but 127.0.0.1:%d: port "\
        "%d is already in use on this machine" % (port, port) in str(info.value)


@pytest.mark.parametrize("host", ["10.1.2.3", "example.com"])
def test_non_loopback_address_needs_explicit_permission(tmp_path, host):
    address = "%s:%d" % (host, portpicker.pick_unused_port())
    spec = spec_lib.load(_write(tmp_path, _set(("cluster", "ps"), [address])))
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.check_local(spec)
    assert ("field cluster.ps[0]: expected a loopback host (127.0.0.1, "
            "localhost or ::1) in local mode" in str(info.value))
    assert "set local.allow_non_loopback to true" in str(info.value)
    raw = _set(("cluster", "ps"), [address])
    raw["local"] = {"allow_non_loopback": True}
    spec = spec_lib.load(_write(tmp_path, raw, "allowed.json"))
    spec_lib.check_local(spec)  # a free port: the host is now allowed


def test_non_loopback_local_host_is_refused(tmp_path):
    spec = spec_lib.load(_write(tmp_path, _set(("local", "host"),
                                               "192.168.0.10")))
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.check_local(spec)
    assert "field local.host: expected a loopback host" in str(info.value)


def test_too_many_processes_for_local_mode(tmp_path):
    spec = spec_lib.load(os.path.join(REPO_ROOT, "cluster_specs",
                                      "inception_96_plus_4.json"))
    with pytest.raises(spec_lib.SpecError) as info:
        spec_lib.check_local(spec)
    assert "field cluster: expected at most local.max_processes=16" in str(
        info.value)


def test_shipped_specs_are_valid_and_default_is_n2_b1_with_a_straggler():
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "cluster_specs", "*_*.json")))
    specs = {os.path.basename(p): spec_lib.load(p) for p in paths}
    assert {"local_default.json", "inception_50_plus_4.json",
            "inception_96_plus_4.json"} <= set(specs)
    default = specs["local_default.json"]
    assert default.counts == {"chief": 1, "ps": 1, "worker": 3, "evaluator": 0}
    assert (default.replicas_to_aggregate, default.backup_workers) == (2, 1)
    assert [s["task"] for s in default.stragglers] == ["worker-2"]
    assert default.program_argv(["--x=1"])[1:] == [
        "-m", "models.train", "--replicas_to_aggregate=2",
        "--total_num_replicas=3", "--x=1"]
    assert default.program_argv()[0] == sys.executable
    big = specs["inception_96_plus_4.json"]
    assert (big.replicas_to_aggregate, big.total_num_replicas) == (96, 100)


def test_schema_file_is_valid_json_and_checks_itself_by_example():
    schema = schema_lib.load_schema()
    assert schema["additionalProperties"] is False
    # The checker reads every key of the spec from the schema file.
    assert set(schema["properties"]) >= {"cluster", "sync", "program", "env",
                                         "restart", "stragglers", "local",
                                         "kubernetes"}
    schema_lib.check(GOOD, schema)


def test_cli_bad_spec_exits_2_with_one_paragraph_and_no_traceback(tmp_path):
    path = _write(tmp_path, _set(("sync", "replicas_to_aggregate"), 9))
    proc = subprocess.run([sys.executable, "-m", "launch", path],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT),
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    message = without_tf_log(proc.stderr)
    assert message.startswith("launch: error: %s: field "
                              "sync.replicas_to_aggregate: expected an "
                              "integer from 1 to the number of workers (3)"
                              % path)
    assert message.count("\n") == 1 and "Traceback" not in proc.stderr


def test_cli_in_process_returns_2_for_bad_specs(tmp_path, capsys):
    assert main([_write(tmp_path, "{")]) == 2
    assert main(["render-k8s", _write(tmp_path, _drop("program"), "b.json")]) == 2
    assert main(["validate", os.path.join(REPO_ROOT, "cluster_specs",
                                          "local_default.json")]) == 0
    assert main(["--run-dir", str(tmp_path / "never"),
                 "--program", "python 'unclosed"]) == 2
    assert not (tmp_path / "never").exists()  # refused before any side effect
    err = capsys.readouterr().err
    assert "--program: expected a shell-style command line, but No closing" in err
    assert "expected valid JSON, but line 1, column 2" in err
    assert "field program: expected this required field (an object)" in err
