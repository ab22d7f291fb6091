"""Linux network namespaces joined by veth links, for tests that need several hosts.

A `Topology` creates its namespaces and links itself, and `close()` removes everything it made:
the processes started in its namespaces (their process groups, then anything else still inside),
then the namespaces, which takes their veth links with them. Nothing is ever created in the root
namespace: each link is created with both ends directly in their namespaces, and every address
lives on one of those ends.

Names are `<prefix><role>-<suffix>` (`pf-c-ab12`), the suffix random per topology. An owner file
(`<tmp>/promote-netns-owners/<suffix>`, holding the creating process's pid) tells a live
topology from the leftovers of a run that crashed: `remove_leftovers(prefix)` removes only those
whose owner is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

OWNERS = Path(tempfile.gettempdir()) / "promote-netns-owners"


class NetnsError(RuntimeError):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable() -> str:
    """'' when this process may create namespaces, else why not (not root, no `ip`)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return ""


def namespaces() -> list[str]:
    """Every named namespace (`ip netns list` prints `NAME (id: N)` or `NAME`)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).split()]


def owner_alive(suffix: str) -> bool:
    try:
        pid = int((OWNERS / suffix).read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_suffixes(prefix: str, names: Sequence[str]) -> set[str]:
    """The suffixes of `names` (`<prefix><role>-<suffix>`) whose owner is gone."""
    found = {name.rsplit("-", 1)[1] for name in names
             if name.startswith(prefix) and "-" in name[len(prefix):]}
    return {suffix for suffix in found if not owner_alive(suffix)}


def remove_leftovers(prefix: str) -> list[str]:
    """Remove namespaces named `<prefix>...-<suffix>` whose owner process is gone (a run that
    crashed, or was killed before its cleanup), and the processes still inside them."""
    names = namespaces()
    stale = stale_suffixes(prefix, names)
    removed = [n for n in names if n.startswith(prefix) and n.rsplit("-", 1)[1] in stale]
    for name in removed:
        _empty(name)
        ip("netns", "delete", name, check=False)
    for suffix in stale:
        (OWNERS / suffix).unlink(missing_ok=True)
    if OWNERS.is_dir():  # owners of topologies already removed
        for owner in OWNERS.iterdir():
            if not owner_alive(owner.name):
                owner.unlink(missing_ok=True)
    return removed


def _empty(ns: str, grace: float = 3.0) -> None:
    """Stop every process inside `ns`: SIGTERM, then SIGKILL what is left after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_in(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = pids_in(ns)
        if not pids:
            return


@dataclass(frozen=True)
class Link:
    """A veth pair: `a_dev` in `a_ns` with `a_addr`, `b_dev` in `b_ns` with `b_addr` (/24)."""

    a_ns: str
    a_dev: str
    a_addr: str
    b_ns: str
    b_dev: str
    b_addr: str


@dataclass
class Topology:
    prefix: str = "pf-"
    suffix: str = field(default_factory=lambda: secrets.token_hex(2))
    names: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.suffix).write_text(str(os.getpid()))

    def name(self, role: str) -> str:
        return f"{self.prefix}{role}-{self.suffix}"

    def add_namespace(self, role: str) -> str:
        """A new namespace with `lo` up; its name."""
        name = self.name(role)
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def add_link(self, a_ns: str, a_dev: str, a_addr: str, b_ns: str, b_dev: str,
                 b_addr: str) -> Link:
        """A veth pair created with each end in its namespace, addressed (/24) and up."""
        a_dev, b_dev = f"{a_dev}-{self.suffix}", f"{b_dev}-{self.suffix}"
        ip("link", "add", a_dev, "netns", a_ns, "type", "veth", "peer", "name", b_dev,
           "netns", b_ns)
        link = Link(a_ns, a_dev, a_addr, b_ns, b_dev, b_addr)
        self.links.append(link)
        for ns, dev, addr in ((a_ns, a_dev, a_addr), (b_ns, b_dev, b_addr)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        return link

    def set_up(self, ns: str, dev: str, up: bool) -> None:
        ip("-n", ns, "link", "set", dev, "up" if up else "down")

    def popen(self, ns: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """`argv` inside `ns` (`ip netns exec` execs it: the pid is the command's), in a
        process group of its own; stopped by `close()` if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, ns: str, argv: Sequence[str], timeout: float = 120,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout,
                              check=False, **kwargs)

    def stop(self) -> None:
        """Stop every process this topology started: SIGTERM to each process group at once,
        SIGKILL to what is left after a grace period."""
        stop_groups(self.procs)

    def close(self) -> None:
        """Stop every process this topology started, then anything else still inside its
        namespaces; delete the namespaces (their links go with them)."""
        self.stop()
        for name in self.names:
            _empty(name)
            ip("netns", "delete", name, check=False)
        self.names.clear()
        (OWNERS / self.suffix).unlink(missing_ok=True)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal `proc`'s process group; SIGKILL it after `grace` s. Reaps `proc`."""
    stop_groups([proc], sig, grace)


def stop_groups(procs: Sequence[subprocess.Popen], sig: int = signal.SIGTERM,
                grace: float = 10.0) -> None:
    """Signal the process group of each of `procs` at once, wait for them together, SIGKILL
    what is left after `grace` s (the leader may be gone while others of its group live on)."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + grace
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
