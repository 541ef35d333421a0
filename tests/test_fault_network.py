"""A network cut, not a crash (issue 6, item 7): every task of the cluster
runs in its own network namespace behind a veth pair on a bridge; one
worker's link is taken down in the middle of training and brought back.
The coordinator runs in the test's namespace, on the bridge's address.
"""
import os
import random

import pytest

from tests.test_fault_workers import _ProbeRun, _check_whole_updates, run_body

HERE = __name__


def _cut_link_then_restore(run_dir, seed):
    import threading
    import time
    import portpicker
    from ps_sync.testing.netns import NetnsHosts
    rng = random.Random(seed)
    names = ["ps-0", "worker-0", "worker-1", "worker-2"]
    with NetnsHosts(names) as hosts:
        addresses = {
            "chief": ["%s:%d" % (hosts.gateway,
                                 portpicker.pick_unused_port())],
            "ps": ["%s:%d" % (hosts.address("ps-0"),
                              portpicker.pick_unused_port())],
            "worker": ["%s:%d" % (hosts.address(w),
                                  portpicker.pick_unused_port())
                       for w in names[1:]]}
        # A cut is noticed by gRPC keepalive (the launcher's 300 s would
        # outlast the test); pings this frequent are fine for a short run.
        run = _ProbeRun(run_dir, workers=3, replicas=2, addresses=addresses,
                        task_prefix={n: hosts.prefix(n) for n in names},
                        grpc_options={"grpc.keepalive_time_ms": 10000,
                                      "grpc.keepalive_timeout_ms": 5000},
                        delay_s=0.05)  # 25 s stay within the probe's steps
        run.run(12)  # traced and warm
        cut = []

        def cut_link():
            hosts.cut("worker-2")
            cut.append((time.time(), run.iterations()))

        timer = threading.Timer(rng.uniform(0.05, 0.5), cut_link)
        timer.start()
        # Training goes on without worker-2 (no join: its closure is stuck
        # on the cut link): at least 15 more updates, and the link stays
        # down past keepalive (10 + 5 s), so the coordinator's handling of
        # the lost worker runs while it is still unreachable.
        run.feed_until(lambda: (cut and run.iterations() >= cut[0][1] + 15
                                and time.time() > cut[0][0] + 25),
                       timeout_s=150)
        timer.join()
        cut_time, cut_step = cut[0]
        cut_until_step = run.iterations()
        restore_time = time.time()
        hosts.restore("worker-2")
        run.coordinator.join()  # its stuck closure ends (or is retried)
        rejoined = run.until_admitted(2, since=restore_time)
        result = run.finish()
        run.cluster.stop()
    result.update(cut_time=cut_time, cut_step=cut_step,
                  cut_until_step=cut_until_step, restore_time=restore_time,
                  rejoined=rejoined, addresses=addresses)
    return result


@pytest.mark.timeout(400)
def test_cut_worker_link_is_not_waited_for_and_rejoins(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    r, msg = run_body(HERE + ":_cut_link_then_restore", tmp_path)
    # Really on separate hosts of the bridge.
    assert len({a.split(":")[0] for job in r["addresses"].values()
                for a in job}) == 5, msg
    _check_whole_updates(r, 2, msg)
    assert r["cut_until_step"] - r["cut_step"] >= 15, msg
    # While cut off, no push of worker-2 reached the PS; steps closed on
    # workers 0 and 1 (the step open at the cut may hold worker-2's push).
    assert not [p for p in r["pushes"] if p["worker"] == 2
                and r["cut_time"] < p["arrived_at"] < r["restore_time"]], msg
    rows = r["rows"][r["cut_step"] + 1:r["cut_until_step"]]
    assert rows and all(row == [0, 1] for row in rows), msg
    # Link back: it was admitted to an applied step again.
    assert r["rejoined"] is not None, msg
    applied = {s["step"]: s for s in r["step_records"]}
    assert 2 in applied[r["rejoined"]["step"]]["admitted"], msg


@pytest.mark.timeout(60)
def test_stale_hosts_are_removed_and_used_subnets_skipped():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN)")
    import subprocess
    from ps_sync.testing import netns
    # What a test process killed before close() leaves: pid 99998 is gone.
    dead = 99998
    assert not os.path.exists("/proc/%d" % dead)
    for cmd in (["netns", "add", "ps_sync_%05d_0" % dead],
                ["link", "add", "psb%05d" % dead, "type", "bridge"],
                ["addr", "add", "10.213.77.1/24", "dev", "psb%05d" % dead]):
        subprocess.run(["ip"] + cmd, check=True)
    assert netns._free_subnet(77) == "10.213.78"  # .77 is in use
    with netns.NetnsHosts(["a"]) as hosts:
        assert "ps_sync_%05d_0" % dead not in netns._ip_output("netns",
                                                               "list")
        assert "psb%05d" % dead not in netns._ip_output("link")
        assert hosts.gateway.startswith("10.213.")
    assert netns._free_subnet(77) == "10.213.77"
