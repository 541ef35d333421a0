"""Run a function in a fresh Python interpreter and bring its result back.

In-process TensorFlow servers cannot be shut down and forking a process that
already runs TensorFlow is unsafe, so every cluster test runs its cluster in
a child interpreter of its own. The child runs in its own process group and
is killed whole when the timeout passes: a hung cluster costs its timeout, not
the suite.

    result = fresh_interpreter.run("tests.test_x:_body", kwargs, timeout=120)
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class ChildFailed(AssertionError):
    """The child raised, exited non-zero, or was cut off by its timeout."""


class ChildTimedOut(ChildFailed):
    pass


def _tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


def run(target, kwargs=None, timeout=180.0, env=None):
    """Call `module:function(**kwargs)` in a new interpreter.

    Returns the function's JSON-serialisable result. Raises ChildTimedOut if it
    runs past `timeout` seconds (the whole process group is killed), and
    ChildFailed with the child's output if it fails.
    """
    with tempfile.TemporaryDirectory(prefix="ps_sync_child_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "output.log")
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + [p for p in [child_env.get("PYTHONPATH")] if p])
        child_env.setdefault("GRPC_FAIL_FAST", "use_caller")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, target, result_path,
                 json.dumps(kwargs or {})],
                stdout=log, stderr=subprocess.STDOUT, env=child_env,
                cwd=REPO_ROOT, start_new_session=True)
            start = time.monotonic()
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                with open(log_path, errors="replace") as f:
                    output = f.read()
                raise ChildTimedOut(
                    "%s did not finish within %.0f s and was killed with its "
                    "process group; last output:\n%s"
                    % (target, timeout, _tail(output)))
            finally:
                _kill_group(proc)  # no stray grandchildren either way
        with open(log_path, errors="replace") as f:
            output = f.read()
        if code != 0 or not os.path.exists(result_path):
            raise ChildFailed("%s exited with code %s after %.1f s; output:\n%s"
                              % (target, code, time.monotonic() - start,
                                 _tail(output, 120)))
        with open(result_path) as f:
            return json.load(f)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _child_main(argv):
    target, result_path, kwargs = argv[1], argv[2], json.loads(argv[3])
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**kwargs)
    with open(result_path, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    # In-process servers keep threads that never end: leave without joining.
    os._exit(0)


if __name__ == "__main__":
    _child_main(sys.argv)
