"""Test hosts in Linux network namespaces, so a test can cut a real link.

Each host is a namespace with one veth pair to a bridge in the calling
namespace, which also holds the bridge's address (the coordinator's host).
`cut(host)` takes the host's link down: its connections stall as on a
broken network (no refused connection, no reset), until `restore(host)`.
Needs root (CAP_NET_ADMIN) and iproute2; every name carries the creating
process's id, and `close()` removes them all (what a killed process left
is removed by the next one; each picks a subnet no interface is in).

    with NetnsHosts(["ps-0", "worker-0"]) as hosts:
        hosts.address("worker-0")        # "10.213.X.11"
        hosts.prefix("worker-0")         # argv prefix: ip netns exec ...
        hosts.cut("worker-0"); hosts.restore("worker-0")
"""
import os
import re
import shutil
import subprocess


class NetnsUnavailable(RuntimeError):
    pass


def _ip(*args):
    proc = subprocess.run(["ip"] + list(args), capture_output=True,
                          text=True)
    if proc.returncode:
        raise NetnsUnavailable("ip %s: %s" % (" ".join(args),
                                              proc.stderr.strip()))


def _ip_output(*args):
    proc = subprocess.run(["ip"] + list(args), capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else ""


def _remove_stale():
    """Delete the namespaces and bridges of creators that are gone (a test
    process killed before its `close()`): left behind, they pile up, and
    their addresses stay routed."""
    for name, tag in re.findall(r"^(ps_sync_(\d{5})_\d+)",
                                _ip_output("netns", "list"), re.M):
        if not os.path.exists("/proc/%d" % int(tag)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for tag in re.findall(r"^\d+: psb(\d{5})[:@]", _ip_output("link"), re.M):
        if not os.path.exists("/proc/%d" % int(tag)):
            subprocess.run(["ip", "link", "del", "psb" + tag],
                           capture_output=True)


def _free_subnet(first):
    """10.213.X, from X = first on, that no interface here is in."""
    used = set(int(x) for x in re.findall(r"inet 10\.213\.(\d+)\.",
                                          _ip_output("-4", "addr")))
    for i in range(250):
        x = (first - 1 + i) % 250 + 1
        if x not in used:
            return "10.213.%d" % x
    raise NetnsUnavailable("no free 10.213.X.0/24 subnet")


class NetnsHosts:

    def __init__(self, names):
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2's `ip` is not installed")
        _remove_stale()
        tag = "%05d" % (os.getpid() % 100000)
        self._subnet = _free_subnet(os.getpid() % 250 + 1)
        self.bridge = "psb" + tag
        self.hosts = {}
        for i, name in enumerate(names):
            self.hosts[name] = {"ns": "ps_sync_%s_%d" % (tag, i),
                                "veth": "psv%s%d" % (tag, i),
                                "peer": "psp%s%d" % (tag, i),
                                "address": "%s.%d" % (self._subnet, 10 + i)}
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self):
        """The calling namespace's address on the bridge."""
        return self._subnet + ".1"

    def _create(self):
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", self.gateway + "/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts.values():
            _ip("netns", "add", h["ns"])
            _ip("link", "add", h["veth"], "type", "veth", "peer", "name",
                h["peer"])
            _ip("link", "set", h["peer"], "netns", h["ns"])
            _ip("link", "set", h["veth"], "master", self.bridge)
            _ip("link", "set", h["veth"], "up")
            _ip("-n", h["ns"], "addr", "add", h["address"] + "/24", "dev",
                h["peer"])
            _ip("-n", h["ns"], "link", "set", h["peer"], "up")
            _ip("-n", h["ns"], "link", "set", "lo", "up")

    def address(self, name):
        return self.hosts[name]["address"]

    def prefix(self, name):
        """The argv prefix that runs a command on that host."""
        return ["ip", "netns", "exec", self.hosts[name]["ns"]]

    def cut(self, name):
        _ip("link", "set", self.hosts[name]["veth"], "down")

    def restore(self, name):
        _ip("link", "set", self.hosts[name]["veth"], "up")

    def close(self):
        for h in self.hosts.values():
            subprocess.run(["ip", "netns", "del", h["ns"]],
                           capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge],
                       capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
