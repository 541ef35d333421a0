"""ps_sync.testing.fresh_interpreter: a hung cluster test costs its timeout,
not the suite, and reports what happened."""
import os

import pytest

from ps_sync.testing import fresh_interpreter
from ps_sync.testing.fresh_interpreter import ChildFailed, ChildTimedOut


def _add(a, b):
    return {"sum": a + b, "pid": os.getpid()}


def _fail(message):
    print("about to fail", flush=True)
    raise ValueError(message)


def _hanging_cluster(pid_file):
    """An in-process cluster whose only step blocks forever on the PS: a
    dequeue from a shared queue nobody fills (queue timeouts do not exist)."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    from ps_sync.testing import inprocess_cluster
    import tensorflow as tf
    strategy = inprocess_cluster.strategy(num_workers=1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    @tf.function
    def never_ends():
        with tf.device("/job:ps/task:0"):
            queue = tf.raw_ops.FIFOQueueV2(component_types=[tf.float32],
                                           shared_name="never_filled")
            return tf.raw_ops.QueueDequeueV2(handle=queue,
                                             component_types=[tf.float32])

    coordinator.schedule(never_ends)
    print("scheduled a step that never ends", flush=True)
    coordinator.join()
    return "unreachable"


@pytest.mark.timeout(60)
def test_child_returns_its_value():
    result = fresh_interpreter.run("tests.test_fresh_interpreter:_add",
                                   {"a": 2, "b": 3}, timeout=50)
    assert result["sum"] == 5
    assert result["pid"] != os.getpid()


@pytest.mark.timeout(60)
def test_failing_child_reports_its_output():
    with pytest.raises(ChildFailed) as info:
        fresh_interpreter.run("tests.test_fresh_interpreter:_fail",
                              {"message": "boom"}, timeout=50)
    assert not isinstance(info.value, ChildTimedOut)
    message = str(info.value)
    assert message.startswith(
        "tests.test_fresh_interpreter:_fail exited with code 1 after ")
    assert "about to fail" in message
    assert "ValueError: boom" in message


@pytest.mark.timeout(120)
def test_hanging_cluster_is_cut_off_with_a_clear_report(tmp_path):
    pid_file = str(tmp_path / "child.pid")
    with pytest.raises(ChildTimedOut) as info:
        fresh_interpreter.run("tests.test_fresh_interpreter:_hanging_cluster",
                              {"pid_file": pid_file}, timeout=30)
    message = str(info.value)
    assert message.startswith(
        "tests.test_fresh_interpreter:_hanging_cluster did not finish within "
        "30 s and was killed with its process group; last output:")
    assert "scheduled a step that never ends" in message
    with open(pid_file) as f:
        child = int(f.read())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
