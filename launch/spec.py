"""Load and validate a cluster spec (format: cluster_specs/schema.json).

`load(path)` returns a `Spec` or raises `SpecError`, whose message is one
paragraph naming the file, the field and what was expected. Checks that need
this machine (ports, loopback, process count) are in `check_local`, run only
when launching locally.
"""
import errno
import ipaddress
import json
import os
import socket
import sys

from launch import schema as schema_lib

JOBS = ("chief", "ps", "worker", "evaluator")
LOCAL_DEFAULTS = {"host": "127.0.0.1", "allow_non_loopback": False,
                  "run_root": "runs", "startup_timeout_s": 120.0,
                  "stop_grace_s": 5.0, "max_processes": 16, "grpc_options": {}}
K8S_DEFAULTS = {"image": "ps-sync:latest", "namespace": "default",
                "port": 2222, "resources": {}, "run_dir": "/tmp/ps_sync_run"}
DEFAULT_MAX_RESTARTS = 3
_DIST_PARAMS = {"fixed": ("value",), "uniform": ("low", "high"),
                "exponential": ("mean",), "lognormal": ("median", "sigma")}


class SpecError(Exception):
    """A spec the launcher refuses; str() is the whole user-facing message."""

    def __init__(self, path, field, expected, hint=None):
        where = "%s: field %s" % (path, field) if field else path
        text = "%s: expected %s." % (where, expected)
        if hint:
            text += " Hint: %s" % hint
        text += " (Format: cluster_specs/schema.json.)"
        super().__init__(text)
        self.path, self.field = path, field


class Spec:
    """A validated spec with defaults filled in."""

    def __init__(self, path, raw):
        self.path, self.raw = path, raw
        self.name = raw.get("name") or _default_name(path)
        cluster = raw["cluster"]
        self.counts = {job: _count(cluster.get(job, 0)) for job in JOBS}
        self.addresses = {job: list(cluster[job]) for job in JOBS
                          if isinstance(cluster.get(job), list)}
        self.replicas_to_aggregate = raw["sync"]["replicas_to_aggregate"]
        self.total_num_replicas = self.counts["worker"]
        self.backup_workers = self.total_num_replicas - self.replicas_to_aggregate
        self.command = list(raw["program"]["command"])
        self.args = list(raw["program"].get("args", []))
        self.env = dict(raw.get("env", {}))
        self.max_restarts = raw.get("restart", {}).get(
            "max_restarts", DEFAULT_MAX_RESTARTS)
        self.stragglers = list(raw.get("stragglers", []))
        self.local = dict(LOCAL_DEFAULTS, **raw.get("local", {}))
        self.kubernetes = dict(K8S_DEFAULTS, **raw.get("kubernetes", {}))

    def sync_flags(self):
        return ["--replicas_to_aggregate=%d" % self.replicas_to_aggregate,
                "--total_num_replicas=%d" % self.total_num_replicas]

    def program_argv(self, extra_args=(), command=None, local=True):
        """The chief's command line: command, spec args, sync flags, then the
        launcher's extra flags (later flags win in absl and argparse)."""
        argv = list(command or self.command)
        if local and argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the launcher's interpreter and venv
        return argv + self.args + self.sync_flags() + list(extra_args)

    def num_processes(self):
        return sum(self.counts.values())


def load(path):
    """Read, parse and validate a spec file."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise SpecError(path, None, "a readable cluster-spec JSON file, but "
                        "it cannot be read (%s)" % (e.strerror or e)) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(path, None, "valid JSON, but line %d, column %d: %s"
                        % (e.lineno, e.colno, e.msg)) from None
    try:
        schema_lib.check(raw)
    except schema_lib.Violation as v:
        raise SpecError(path, v.field, v.expected, v.hint) from None
    _check_rules(path, raw)
    return Spec(path, raw)


def _default_name(path):
    base = os.path.splitext(os.path.basename(path))[0]
    return "".join(c if c.isalnum() else "-" for c in base.lower()).strip("-")


def _count(job):
    return len(job) if isinstance(job, list) else job


def _check_rules(path, raw):
    """What JSON Schema cannot say: counts, addresses, sync, references."""
    cluster = raw["cluster"]
    bounds = {"chief": (1, 1), "ps": (1, None), "worker": (1, None),
              "evaluator": (0, 1)}
    for job, (low, high) in bounds.items():
        n = _count(cluster.get(job, 0))
        if n < low or (high is not None and n > high):
            wanted = ("exactly %d" % low if low == high else
                      "at least %d" % low if high is None else
                      "%d to %d" % (low, high))
            raise SpecError(path, "cluster." + job, "%s task(s), got %d"
                            % (wanted, n))
    seen = {}
    for job in JOBS:
        addresses = cluster.get(job)
        for i, address in enumerate(addresses if isinstance(addresses, list)
                                    else []):
            field = "cluster.%s[%d]" % (job, i)
            host, port = _parse_address(path, field, address)
            key = (_canonical_host(host), port)
            if key in seen:
                raise SpecError(path, field, "an address used by one task "
                                "only, but %s is also %s" % (address, seen[key]))
            seen[key] = field
    workers = _count(cluster["worker"])
    sync = raw["sync"]
    n = sync["replicas_to_aggregate"]
    if not 1 <= n <= workers:
        raise SpecError(path, "sync.replicas_to_aggregate",
                        "an integer from 1 to the number of workers (%d), got "
                        "%d" % (workers, n))
    if "backup_workers" in sync and sync["backup_workers"] != workers - n:
        raise SpecError(path, "sync.backup_workers",
                        "%d (cluster.worker has %d workers and "
                        "replicas_to_aggregate is %d), got %d; or leave it out"
                        % (workers - n, workers, n, sync["backup_workers"]))
    tasks = {"%s-%d" % (job, i) for job in JOBS
             for i in range(_count(cluster.get(job, 0)))}
    for key in raw.get("env", {}):
        if key != "all" and key not in JOBS and key not in tasks:
            raise SpecError(path, "env." + key, '"all", a job name or an '
                            "existing task such as worker-0, got %s"
                            % json.dumps(key))
    stragglers = set()
    for i, entry in enumerate(raw.get("stragglers", [])):
        field = "stragglers[%d]" % i
        if entry["task"] not in tasks:
            raise SpecError(path, field + ".task", "an existing worker "
                            "(worker-0 to worker-%d), got %s"
                            % (workers - 1, json.dumps(entry["task"])))
        if entry["task"] in stragglers:
            raise SpecError(path, field + ".task", "one entry per worker, but "
                            "%s appears twice" % entry["task"])
        stragglers.add(entry["task"])
        for key in ("every_s", "pause_s"):
            _check_distribution(path, "%s.%s" % (field, key), entry[key],
                                positive=key == "every_s")


def _check_distribution(path, field, dist, positive):
    kind = dist["distribution"]
    params = _DIST_PARAMS[kind]
    extra = sorted(set(dist) - set(params) - {"distribution"})
    if extra:
        raise SpecError(path, "%s.%s" % (field, extra[0]), "no such parameter "
                        "for the %s distribution, which takes %s"
                        % (kind, ", ".join(params)))
    for name in params:
        if name not in dist:
            raise SpecError(path, "%s.%s" % (field, name), "a number (the %s "
                            "distribution takes %s)" % (kind, ", ".join(params)))
    if kind == "uniform" and dist["low"] > dist["high"]:
        raise SpecError(path, field + ".high", "high >= low (%s), got %s"
                        % (dist["low"], dist["high"]))
    scale = {"fixed": "value", "uniform": "high", "exponential": "mean",
             "lognormal": "median"}[kind]
    if positive and dist[scale] <= 0:
        raise SpecError(path, "%s.%s" % (field, scale), "a number > 0 (time "
                        "between pauses), got %s" % dist[scale])


def _parse_address(path, field, address):
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    name = host[1:-1] if bracketed else host
    valid_host = bool(name) and (
        _is_ip(name) if bracketed or ":" in name else
        all(part and all(c.isalnum() or c == "-" for c in part)
            for part in name.split(".")))
    if (not sep or not valid_host or not port.isdigit()
            or not 1 <= int(port) <= 65535 or (":" in name and not bracketed)):
        raise SpecError(path, field, '"host:port" with a port from 1 to 65535 '
                        "(IPv6 as [::1]:port), got %s" % json.dumps(address))
    return name, int(port)


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _canonical_host(host):
    return "127.0.0.1" if host == "localhost" else host


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local(spec):
    """Checks for launching on this machine: process count, loopback
    addresses, ports not in use."""
    local = spec.local
    if spec.num_processes() > local["max_processes"]:
        raise SpecError(spec.path, "cluster", "at most local.max_processes=%d "
                        "processes for local mode (one TensorFlow process takes"
                        " about 0.6 GB), got %d; use render-k8s for large "
                        "clusters or raise local.max_processes"
                        % (local["max_processes"], spec.num_processes()))
    hosts = [("local.host", local["host"])] + [
        ("cluster.%s[%d]" % (job, i), _parse_address(spec.path, "", a)[0])
        for job, addresses in spec.addresses.items()
        for i, a in enumerate(addresses)]
    if not local["allow_non_loopback"]:
        for field, host in hosts:
            if not _is_loopback(host):
                raise SpecError(
                    spec.path, field, "a loopback host (127.0.0.1, localhost "
                    "or ::1) in local mode, got %s; set local.allow_non_loopback"
                    " to true to use it (TensorFlow's gRPC servers have no "
                    "authentication)" % json.dumps(host))
    for job, addresses in spec.addresses.items():
        if job == "evaluator":
            continue  # the evaluator runs the program; it listens on nothing
        for i, address in enumerate(addresses):
            host, port = _parse_address(spec.path, "", address)
            problem = _port_problem(port)
            if problem:
                raise SpecError(spec.path, "cluster.%s[%d]" % (job, i),
                                "a free port, but %s: %s" % (address, problem))


def _port_problem(port):
    """Why `port` cannot be served here, or None. TensorFlow servers bind all
    interfaces whatever the host, so check the wildcard address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "port %d is already in use on this machine" % port
            return "port %d cannot be bound (%s)" % (port, e.strerror)
    return None
