"""Local mode: run a validated spec as processes on this machine.

Processes are managed by `ps_sync.local_cluster.LocalCluster` (the one
process manager); this module adds the spec's policy: the restart rules by
role, straggler injection and the run directory.

Restart rules. A parameter server restarted alone has lost its variables,
so roles differ:
  worker dies                -> restart it alone at the same address;
  parameter server dies      -> restart all parameter servers and the chief
                                (the program restores its last checkpoint);
  chief killed by a signal   -> the same;
  chief exits with a code    -> the run ends with that code.
At most `restart.max_restarts` restarts per run; past that a dead worker
stays dead (backups absorb it) and any other failure ends the run.
"""
import json
import os
import shlex
import time

from ps_sync import local_cluster as lc
from launch import spec as spec_lib
from launch.stragglers import StragglerInjector

FAILED = 1  # exit status when the run fails without a chief exit code


def make_run_dir(spec, run_dir=None):
    if run_dir is None:
        run_dir = os.path.join(
            spec.local["run_root"],
            "%s-%s-%d" % (spec.name, time.strftime("%Y%m%d-%H%M%S"),
                          os.getpid()))
    os.makedirs(run_dir, exist_ok=True)
    return os.path.abspath(run_dir)


def task_env(spec):
    """Spec env, split into the all-task part and per job/task parts."""
    env = dict(spec.env)
    return env.pop("all", {}), env


def program_command(program):
    """The argv of a --program override (None: the spec's)."""
    if program is None:
        return None
    try:
        command = shlex.split(program)
    except ValueError as e:
        raise spec_lib.SpecError("--program", None, "a shell-style command "
                                 "line, but %s" % e) from None
    if not command:
        raise spec_lib.SpecError("--program", None, "a command, got nothing")
    return command


def build_cluster(spec, run_dir, extra_args=(), program=None, echo=True):
    common, per_task = task_env(spec)
    argv = spec.program_argv(extra_args, command=program_command(program))
    return lc.LocalCluster(
        num_workers=spec.counts["worker"], num_ps=spec.counts["ps"],
        chief=argv, evaluator=argv if spec.counts["evaluator"] else None,
        addresses=spec.addresses, host=spec.local["host"], run_dir=run_dir,
        env=common, task_env=per_task, grpc_options=spec.local["grpc_options"],
        echo=echo, startup_timeout=spec.local["startup_timeout_s"],
        stop_grace=spec.local["stop_grace_s"], handle_signals=True)


def run(spec, extra_args=(), run_dir=None, program=None, echo=True):
    """Launch the spec locally; return the exit status for the launcher."""
    spec_lib.check_local(spec)
    program_command(program)  # refuse a bad --program before any side effect
    run_dir = make_run_dir(spec, run_dir)
    cluster = build_cluster(spec, run_dir, extra_args, program, echo)
    with open(os.path.join(run_dir, "spec.json"), "w") as f:
        json.dump(dict(spec.raw, _resolved={
            "cluster": cluster.cluster_spec(),
            "chief_argv": cluster.task("chief", 0).argv}), f, indent=2)
    try:
        with cluster:
            cluster.say("run directory %s" % run_dir)
            injector = StragglerInjector(cluster, spec.stragglers).start()
            try:
                return Supervisor(cluster, spec.max_restarts).wait()
            finally:
                injector.stop()
    except lc.Interrupted as e:
        return e.exit_code
    except lc.CannotStart as e:
        raise spec_lib.SpecError(spec.path, "program.command", "a command "
                                 "that can be executed, but %s" % e) from None
    except lc.ClusterError as e:  # a task failed to start or to restart
        cluster.say("error: %s" % e)
        return FAILED


class Supervisor:
    """Watches the tasks and applies the restart rules until the chief ends."""

    def __init__(self, cluster, max_restarts, poll_interval=0.2):
        self.cluster = cluster
        self.max_restarts = max_restarts
        self.restarts = 0
        self.poll_interval = poll_interval

    def wait(self):
        while True:
            for task in self.cluster.poll():
                code = self._handle(task)
                if code is not None:
                    return code
            time.sleep(self.poll_interval)

    def _handle(self, task):
        """Apply the rules to one exited task; a return value ends the run."""
        if task.alive():
            return None  # restarted meanwhile (with a server that died)
        code = task.returncode
        if task.job == "chief" and code > 0:
            # A chief that lost its parameter server fails with an error,
            # sometimes before the launcher has seen the server die.
            dead_ps = self._dead_parameter_server()
            if dead_ps is not None:
                self.cluster.say("chief failed (exit code %d) after %s died"
                                 % (code, dead_ps.name))
                return self._handle(dead_ps)
        if task.job == "chief" and code >= 0:
            self.cluster.say("chief finished with exit code %d; stopping "
                              "every task" % code)
            return code
        if task.job == "evaluator":
            return None
        if not self._may_restart(task):
            if task.job == "worker":
                return None  # backups carry the run; the chief decides
            return lc.exit_status(code) if task.job == "chief" else (
                FAILED)
        if task.job == "worker":
            self.cluster.say("restarting %s at %s (restart %d of %d)" % (
                task.name, task.address, self.restarts, self.max_restarts))
            self.cluster.restart(task.name)
            return None
        self.cluster.say(
            "%s died: restarting the parameter servers and the chief, which "
            "restores its last checkpoint (restart %d of %d)"
            % (task.name, self.restarts, self.max_restarts))
        chief = self.cluster.task("chief", 0)
        self.cluster.stop_task(chief.name)
        ps = [t for t in self.cluster.servers() if t.job == "ps"]
        for t in ps:
            self.cluster.restart(t.name, wait_ready=False)
        self.cluster.wait_ready(ps)
        self.cluster.restart(chief.name)
        return None

    def _dead_parameter_server(self, grace_s=2.0):
        """A parameter server that exited, looked for during `grace_s`."""
        deadline = time.monotonic() + grace_s
        while True:
            for t in self.cluster.servers():
                if t.job == "ps" and t.proc is not None and not t.alive():
                    self.cluster.poll()  # reports it once, as usual
                    return t
            if time.monotonic() > deadline:
                return None
            time.sleep(self.poll_interval)

    def _may_restart(self, task):
        if self.restarts >= self.max_restarts:
            self.cluster.say("not restarting %s: restart budget of %d used up"
                              % (task.name, self.max_restarts))
            return False
        self.restarts += 1
        return True
