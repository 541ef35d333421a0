"""Straggler injection: make a real worker process slow by pausing it.

TensorFlow has no in-graph sleep and a `tf.py_function` runs on the
coordinator, so the only honest way to slow one worker is to stop its
process: SIGSTOP, wait, SIGCONT. Each worker entry of the spec gets a thread
that alternates running time (`every_s`) and pauses (`pause_s`), both sampled
from their configured distributions with a seeded RNG, and logs every pause
and resume as a JSON line (wall-clock times) in <run_dir>/stragglers.jsonl.
"""
import json
import os
import random
import threading
import time

from ps_sync.local_cluster import ClusterError, proc_stat
# One sampler for the launcher and the simulator's replay of a spec.
from ps_sync.simulator import sample_spec_distribution as sample


def process_state(pid):
    """The kernel's state letter for pid ("T" = stopped), for the log."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


class StragglerInjector:
    """Runs the pause schedules of a spec against a LocalCluster."""

    def __init__(self, cluster, entries, log_path=None):
        self.cluster = cluster
        self.entries = list(entries)
        self.log_path = log_path or os.path.join(cluster.run_dir,
                                                 "stragglers.jsonl")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []

    def start(self):
        for entry in self.entries:
            thread = threading.Thread(target=self._run, args=(entry,),
                                      name="straggler-" + entry["task"],
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        """End every schedule; a task paused right now is resumed first."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10.0)

    def _run(self, entry):
        name = entry["task"]
        rng = random.Random(entry.get("seed", 0))
        if self._stop.wait(entry.get("start_after_s", 0.0)):
            return
        while not self._stop.wait(sample(entry["every_s"], rng)):
            planned = sample(entry["pause_s"], rng)
            try:
                self.cluster.pause(name)
            except ClusterError as e:  # dead or restarting: skip this pause
                self._log(event="skipped", task=name, reason=str(e))
                continue
            start = time.time()
            pid = self.cluster.task(name).pid
            self._log(event="pause", task=name, time=start, planned_s=planned,
                      pid=pid, state=process_state(pid))
            self._stop.wait(planned)  # cut short at teardown
            self.cluster.resume(name)
            end = time.time()
            self._log(event="resume", task=name, time=end, paused_at=start,
                      paused_s=end - start, pid=self.cluster.task(name).pid)

    def _log(self, **record):
        record.setdefault("time", time.time())
        with self._lock, open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
