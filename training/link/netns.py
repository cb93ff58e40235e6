"""A network namespace made for one run, its loopback shaped with htb, its byte counters, and its removal.

Every process of a run is started with ``ip netns exec NAME ...`` (:meth:`Link.exec_prefix`), so the
coordinator (bound to 127.0.0.1) and every gloo connection go over the namespace's own loopback, and only
there. With a rate, the loopback's egress goes through one htb class::

    tc qdisc add dev lo root handle 1: htb default 10 r2q 1000
    tc class add dev lo parent 1: classid 1:10 htb rate R ceil R burst B cburst B quantum Q

so the namespace is **one shared link of rate R**: every byte any process sends (data and ACKs, in every
direction) is queued there once. With ``control_ports`` (the coordination service's), the link is split
into two htb classes under one parent of rate R: the control traffic of those ports (either direction,
``u32`` filters) in a class of priority 0 guaranteed R/100, everything else in the bulk class; both may
use the whole R. The kernels here have no fair-queueing qdisc (fq_codel, sfq and fq are unknown to tc),
so within one class a few hundred bytes of a key-value exchange waited behind every queued byte of an
outer sync: a log line's cross-process loss mean stalled the training loop for the sync's whole transfer.
A link with fair queueing between flows (Linux's default qdisc) lets such small flows through; the
priority class gives that here. A ring collective in which each of M participants sends w bytes puts
M·w bytes through it, so each worker sees R/M (what :mod:`parallel.comm_sim`'s "bandwidth per worker"
is compared against). ``burst`` is the larger of 64 KiB and 1 ms at R: the loopback passes TCP
segmentation-offload packets of up to 64 KiB, and a burst below one such packet made htb fall short of
rates of 1 Gbit/s and more on this machine (840 Mbit/s for a 20 MB transfer at 1 Gbit/s with tc's default
1.4 kB, 1000 Mbit/s with 64 KiB; at 10 and 100 Mbit/s both gave the rate within 1 %). ``quantum`` is set
explicitly (it only divides a link between classes; there is one), so no r2q warning is printed.

Counters: the loopback counts each packet once as transmitted and once as received (tx == rx), so the
bytes that crossed the link are the ``tx_bytes`` difference (:func:`parse_proc_net_dev`,
:func:`counter_delta`). They include every header: 14 (Ethernet) + 20 (IPv4) + 32 (TCP with timestamps)
bytes per packet (a TSO packet of up to 64 KiB carries one set), the ACK packets, gloo's framing, and
the coordination service's gRPC traffic (start-up key exchange, heartbeats, barriers).

The namespace goes on every exit path: :class:`Link` is a context manager whose ``close`` runs with
SIGTERM/SIGINT blocked (a signal during the clean-up is delivered after it), and an ``atexit`` hook closes
any link still open. Processes still inside are the caller's to end first (:mod:`training.link.workers`).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
from typing import Callable, Iterator, NamedTuple

COMMAND_TIMEOUT_S = 30  # every ip/tc call is bounded
LINK_CLASS = "1:10"
CONTROL_CLASS = "1:20"
PARENT_CLASS = "1:1"
CONTROL_SHARE = 100  # the control class is guaranteed R / 100 (it borrows up to R)
R2Q = 1000
QUANTUM_BYTES = 65536
MIN_BURST_BYTES = 65536  # one TSO packet on the loopback
BURST_SECONDS = 1e-3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_UNIT = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9}
MAX_RATE_BPS = 10 ** 12


class LinkUnavailable(ValueError):
    """This machine cannot make the shaped link: not root, no ``ip``, no ``tc``, no htb or no namespaces.
    The message says which (one line)."""


# ----------------------------------------------------------------------------- rates
def parse_rate(text: str, name: str = "rate") -> int:
    """``"100mbit"`` -> 100_000_000 bits/s (tc's decimal units bit, kbit, mbit, gbit). ValueError naming
    ``name`` for anything else, and for rates that are not > 0 or above 1 Tbit/s."""
    m = _RATE.match(str(text))
    if not m:
        raise ValueError(f"{name}={text!r} is not a rate: a number and a unit, bit, kbit, mbit or gbit "
                         "(e.g. 100mbit)")
    bps = float(m.group(1)) * _UNIT[m.group(2).lower()]
    if not 1 <= bps <= MAX_RATE_BPS:
        raise ValueError(f"{name}={text!r} must be between 1bit and 1000gbit (a rate of 0 is no link; "
                         "leave the link unshaped instead)")
    return int(round(bps))


def rate_label(bps: int | None) -> str:
    """Short tc-style spelling: 100000000 -> ``100mbit``; None -> ``unshaped``."""
    if bps is None:
        return "unshaped"
    for unit in ("gbit", "mbit", "kbit"):
        if bps >= _UNIT[unit] and bps % (_UNIT[unit] // 1000 or 1) == 0:
            return f"{bps / _UNIT[unit]:g}{unit}"
    return f"{bps}bit"


def htb_class_options(rate_bps: int, ceil_bps: int | None = None) -> list[str]:
    """The options of an htb class: ceil (default: the rate), burst = cburst = max(64 KiB, 1 ms at the ceil)."""
    ceil_bps = ceil_bps or rate_bps
    burst = max(MIN_BURST_BYTES, int(ceil_bps * BURST_SECONDS / 8))
    return ["rate", f"{rate_bps}bit", "ceil", f"{ceil_bps}bit", "burst", f"{burst}b", "cburst", f"{burst}b",
            "quantum", str(QUANTUM_BYTES)]


def shape_commands(rate_bps: int, control_ports: tuple[int, ...] = ()) -> list[list[str]]:
    """The tc commands (to run inside the namespace) that shape its loopback to ``rate_bps``: the qdisc first,
    then its classes, then (with ``control_ports``) the filters that send those ports' packets to the
    priority class (see the module doc)."""
    qdisc = ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", str(R2Q)]

    def klass(parent: str, classid: str, *options: str) -> list[str]:
        return ["tc", "class", "add", "dev", "lo", "parent", parent, "classid", classid, "htb", *options]

    if not control_ports:
        return [qdisc, klass("1:", LINK_CLASS, *htb_class_options(rate_bps))]
    control = max(rate_bps // CONTROL_SHARE, 1)
    commands = [qdisc, klass("1:", PARENT_CLASS, *htb_class_options(rate_bps)),
                klass(PARENT_CLASS, LINK_CLASS, *htb_class_options(rate_bps - control, rate_bps), "prio", "1"),
                klass(PARENT_CLASS, CONTROL_CLASS, *htb_class_options(control, rate_bps), "prio", "0")]
    for port in control_ports:
        for side in ("sport", "dport"):
            commands.append(["tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                             "u32", "match", "ip", side, str(port), "0xffff", "flowid", CONTROL_CLASS])
    return commands


# ----------------------------------------------------------------------------- counters
class IfaceCounters(NamedTuple):
    """One interface's counters (cumulative since it came up, or a difference of two readings)."""
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


def parse_proc_net_dev(text: str) -> dict[str, IfaceCounters]:
    """``{interface: IfaceCounters}`` from the text of ``/proc/net/dev`` (two header lines, then
    ``name: rx_bytes rx_packets errs drop fifo frame compressed multicast tx_bytes tx_packets ...``).
    ValueError naming the line for text that is not in that format."""
    lines = text.splitlines()
    if len(lines) < 2 or "|" not in lines[1]:
        raise ValueError(f"not /proc/net/dev text: expected two header lines, got {text[:120]!r}")
    columns = [part.split() for part in lines[1].split("|")]
    if len(columns) != 3 or columns[1][:2] != ["bytes", "packets"] or columns[2][:2] != ["bytes", "packets"]:
        raise ValueError(f"not /proc/net/dev text: header {lines[1]!r}")
    n_rx, n_tx = len(columns[1]), len(columns[2])
    out: dict[str, IfaceCounters] = {}
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not name.strip() or len(fields) != n_rx + n_tx or not all(f.isdigit() for f in fields):
            raise ValueError(f"/proc/net/dev line {number} is not 'name: {n_rx + n_tx} counters': {line!r}")
        v = [int(f) for f in fields]
        out[name.strip()] = IfaceCounters(rx_bytes=v[0], rx_packets=v[1], tx_bytes=v[n_rx], tx_packets=v[n_rx + 1])
    return out


def counter_delta(before: dict[str, IfaceCounters], after: dict[str, IfaceCounters],
                  iface: str = "lo") -> IfaceCounters:
    """``after - before`` for ``iface``. ValueError if it is missing or a counter went backwards (the
    interface was reset between the readings)."""
    if iface not in before or iface not in after:
        raise ValueError(f"interface {iface!r} missing from the counters (have {sorted(after)})")
    delta = IfaceCounters(*(a - b for a, b in zip(after[iface], before[iface])))
    if min(delta) < 0:
        raise ValueError(f"counters of {iface!r} went backwards ({before[iface]} -> {after[iface]}): "
                         "the interface was reset between the readings")
    return delta


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT held off inside (a clean-up is not cut short); one that arrived meanwhile is
    delivered on the way out."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ----------------------------------------------------------------------------- environment
def _run(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"no answer within {timeout} s")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def check_tools(geteuid: Callable[[], int] | None = None, which: Callable[[str], str | None] | None = None) -> None:
    """LinkUnavailable (one line, saying which) unless this process is root and ``ip`` and ``tc`` are on the
    PATH (``geteuid``/``which`` default to :func:`os.geteuid`/:func:`shutil.which`). Whether htb and
    namespaces work is found by :func:`check_link`, which makes one."""
    geteuid, which = geteuid or os.geteuid, which or shutil.which
    uid = geteuid()
    if uid != 0:
        raise LinkUnavailable(f"the shaped link needs root (this process runs as uid {uid}): "
                              "'ip netns add' and 'tc' change the network configuration")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2's tc")):
        if which(tool) is None:
            raise LinkUnavailable(f"no '{tool}' command on the PATH (install {package})")


def validate_name(name: str, setting: str = "netns") -> None:
    """ValueError naming ``setting`` unless ``name`` is a plain namespace name (letters, digits, ``_.-``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{setting}={name!r} is not a namespace name: 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")


def namespaces() -> list[str]:
    """The names ``ip netns list`` shows."""
    out = _run(["ip", "netns", "list"])
    if out.returncode:
        raise LinkUnavailable(f"'ip netns list' failed: {_first_line(out.stderr)}")
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def require_free_name(name: str, setting: str = "netns") -> None:
    """ValueError naming ``setting`` if a namespace called ``name`` exists (it is someone else's: the run
    neither uses nor removes it)."""
    if name in namespaces():
        raise ValueError(f"{setting}={name!r} is already in use (ip netns list): another run's, or a leftover; "
                         f"choose another name, or remove it with 'ip netns del {name}' if nothing uses it")


def default_name() -> str:
    """``jaxsys-<pid>``: unique among the processes of this machine."""
    return f"jaxsys-{os.getpid()}"


# ----------------------------------------------------------------------------- the link
_OPEN: dict[str, "Link"] = {}


class Link:
    """A network namespace ``name`` made for one run, its loopback up and shaped to ``rate_bps`` (None:
    unshaped). Use as a context manager; :meth:`close` (idempotent) removes the namespace.

    Opening refuses a name in use (ValueError) and raises LinkUnavailable, leaving nothing behind, where
    the namespace or the htb qdisc cannot be made.
    """

    def __init__(self, name: str, rate_bps: int | None = None, control_ports: tuple[int, ...] = ()):
        validate_name(name)
        if rate_bps is not None and not 1 <= rate_bps <= MAX_RATE_BPS:
            raise ValueError(f"rate_bps={rate_bps!r} must be between 1 and {MAX_RATE_BPS}")
        self.name, self.rate_bps, self.control_ports = name, rate_bps, tuple(control_ports)
        self.is_open = False

    def __enter__(self) -> "Link":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, cmd: list[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """``cmd`` inside the namespace (bounded by ``timeout``), its output captured."""
        return _run(self.exec_prefix() + list(cmd), timeout)

    def open(self) -> None:
        with signals_held():  # made and registered (for the atexit clean-up) without a gap
            self._open()

    def _open(self) -> None:
        require_free_name(self.name)
        made = _run(["ip", "netns", "add", self.name])
        if made.returncode:
            if self.name in namespaces():  # made by someone else in the meantime: not ours to remove
                raise ValueError(f"netns={self.name!r} is already in use (made by another process just now)")
            raise LinkUnavailable(f"'ip netns add {self.name}' failed: {_first_line(made.stderr)} "
                                  "(network namespaces are not available here)")
        self.is_open = True
        _OPEN[self.name] = self
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        up = self.run(["ip", "link", "set", "lo", "up"])
        if up.returncode:
            raise LinkUnavailable(f"cannot bring up the loopback of namespace {self.name}: {_first_line(up.stderr)}")
        if self.rate_bps is None:
            return
        qdisc, *rest = shape_commands(self.rate_bps, self.control_ports)
        out = self.run(qdisc)
        if out.returncode:
            raise LinkUnavailable(f"tc cannot attach an htb qdisc here ({' '.join(qdisc)}): "
                                  f"{_first_line(out.stderr)} (the kernel lacks sch_htb?)")
        for cmd in rest:
            out = self.run(cmd)
            if out.returncode:
                what = "the htb class" if cmd[1] == "class" else "the u32 filter (the kernel lacks cls_u32?)"
                raise LinkUnavailable(f"tc cannot add {what} ({' '.join(cmd)}): {_first_line(out.stderr)}")

    def counters(self) -> dict[str, IfaceCounters]:
        """The namespace's ``/proc/net/dev``, parsed."""
        out = self.run(["cat", "/proc/net/dev"])
        if out.returncode:
            raise RuntimeError(f"cannot read the counters of namespace {self.name}: {_first_line(out.stderr)}")
        return parse_proc_net_dev(out.stdout)

    def qdisc_stats(self) -> str:
        """``tc -s class show dev lo`` inside the namespace (sent bytes, drops, overlimits), as text."""
        return self.run(["tc", "-s", "class", "show", "dev", "lo"]).stdout.strip()

    def close(self) -> bool:
        """Removes the namespace (signals held off meanwhile); True if it is gone. Idempotent."""
        if not self.is_open:
            return True
        with signals_held():
            for _ in range(3):
                _run(["ip", "netns", "del", self.name])
                try:
                    gone = self.name not in namespaces()
                except LinkUnavailable:
                    gone = False
                if gone:
                    break
            self.is_open = not gone
            if gone:
                _OPEN.pop(self.name, None)
            return gone


def check_link(name: str) -> None:
    """Everything the shaped link needs, tried before any work: root, ``ip`` and ``tc``
    (:func:`check_tools`), ``name`` free (ValueError), and a namespace with an htb-shaped loopback made
    and removed again, its control-port filter included (LinkUnavailable naming what failed)."""
    check_tools()
    validate_name(name)
    with Link(name, rate_bps=10 ** 6, control_ports=(1,)):
        pass


@atexit.register
def _close_all() -> None:
    for link in list(_OPEN.values()):
        link.close()
