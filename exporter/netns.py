"""Find network namespaces and keep capture attached to exactly the ones that exist.

A namespace is known by its inode (``readlink /proc/PID/ns/net`` gives ``net:[INODE]``,
``os.stat`` of the file gives the same number as ``st_ino``) and reached through a path
that opens it: ``/var/run/netns/NAME`` (``ip netns``) when there is one, else
``/proc/PID/ns/net`` of one process inside it.

Nothing here enters a namespace or imports bcc: ``NetnsWatcher`` is handed ``attach`` and
``detach`` callables (``EbpfCapture.attach``/``detach`` in production, fakes in tests).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_LINK = re.compile(r"net:\[(\d+)\]")


def netns_inode(path: str) -> int:
    """Inode of the network namespace at ``path`` (a /proc/PID/ns/net link or a bind-mounted file).

    Reads the link text ``net:[N]`` where there is one (no need to open the namespace), and
    falls back to ``os.stat().st_ino`` for bind mounts such as /var/run/netns/NAME.
    Raises OSError when the path does not exist (any more).
    """
    try:
        m = _LINK.fullmatch(os.readlink(path))
    except OSError as exc:
        if exc.errno != 22:  # EINVAL: not a symlink (a bind mount): stat it
            raise
    else:
        if m:
            return int(m.group(1))
    return os.stat(path).st_ino


def discover(
    proc_root: str = "/proc",
    run_netns: str = "/var/run/netns",
    include_host: bool = False,
    read_inode: Callable[[str], int] = netns_inode,
) -> dict[int, str]:
    """Map inode -> a path to open it by, for every network namespace in use.

    Named namespaces (``run_netns``) win over /proc paths, because they outlive processes.
    The host's own namespace (the one of PID 1 in ``proc_root``, or this process's when
    PID 1's cannot be read) is left out unless ``include_host``. Processes that exit during
    the scan are skipped silently.
    """
    found: dict[int, str] = {}
    host: int | None = None
    for who in ("1", "self"):  # PID 1 may be unreadable (e.g. in a sandbox): then our own netns
        try:
            host = read_inode(os.path.join(proc_root, who, "ns", "net"))
            break
        except OSError:
            continue
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(run_netns, name)
        try:
            ino = read_inode(path)
        except OSError:
            continue
        found.setdefault(ino, path)
    try:
        pids = sorted(int(n) for n in os.listdir(proc_root) if n.isdigit())
    except OSError:
        pids = []
    for pid in pids:  # lowest PID first: deterministic, and usually the longest-lived process
        path = os.path.join(proc_root, str(pid), "ns", "net")
        try:
            ino = read_inode(path)
        except OSError:  # ENOENT/ESRCH (exited), EACCES (not ours), ...
            continue
        found.setdefault(ino, path)
    if not include_host and host is not None:
        found.pop(host, None)
    return found


def resolve(paths: Iterable[str], read_inode: Callable[[str], int] = netns_inode) -> dict[int, str]:
    """Map inode -> path for the namespaces given explicitly (``--netns``); missing ones are left out."""
    out: dict[int, str] = {}
    for path in paths:
        try:
            out.setdefault(read_inode(path), path)
        except OSError:
            continue
    return out


class NetnsWatcher:
    """Attach capture to new namespaces and detach it from vanished ones.

    ``scan()`` runs one pass; ``tick()`` runs one when ``interval`` seconds have passed
    (call it from the capture loop). A failed attach is logged, counted in
    ``attach_failures`` and retried on the next scan; it is never fatal. A namespace
    that vanishes is detached without an error.
    """

    def __init__(
        self,
        attach: Callable[[str, int], None],
        detach: Callable[[int], None],
        interval: float = 1.0,
        proc_root: str = "/proc",
        run_netns: str = "/var/run/netns",
        include_host: bool = False,
        only: list[str] | None = None,
        read_inode: Callable[[str], int] = netns_inode,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attach = attach
        self._detach = detach
        self.interval = interval
        self.proc_root = proc_root
        self.run_netns = run_netns
        self.include_host = include_host
        self.only = list(only) if only else None
        self._read_inode = read_inode
        self._clock = clock
        self._attached: dict[int, str] = {}
        self._failing: dict[int, str] = {}  # inode -> last error, so each failure is logged once
        self._next = 0.0
        self.attach_failures = 0
        self.attaches = 0
        self.detaches = 0

    @property
    def attached(self) -> dict[int, str]:
        return dict(self._attached)

    def wanted(self) -> dict[int, str]:
        if self.only is not None:
            return resolve(self.only, self._read_inode)
        return discover(self.proc_root, self.run_netns, self.include_host, self._read_inode)

    def scan(self) -> int:
        """One pass: attach new namespaces, detach vanished ones. Returns how many are attached."""
        self._next = self._clock() + self.interval
        try:
            want = self.wanted()
        except Exception:  # a scan that fails leaves the current set alone
            log.exception("network namespace scan failed")
            return len(self._attached)
        for ino in [i for i in self._attached if i not in want]:
            try:
                self._detach(ino)
            except Exception:
                log.exception("detaching netns %d failed", ino)
            self._attached.pop(ino, None)
            self.detaches += 1
            log.debug("netns %d gone, detached", ino)
        for ino in [i for i in self._failing if i not in want]:
            del self._failing[ino]
        for ino, path in want.items():
            if ino in self._attached:
                continue
            try:
                self._attach(path, ino)
            except Exception as exc:
                self.attach_failures += 1
                msg = f"{type(exc).__name__}: {exc}"
                if self._failing.get(ino) != msg:
                    log.warning("attaching to netns %d (%s) failed, will retry: %s", ino, path, msg)
                self._failing[ino] = msg
                continue
            self._failing.pop(ino, None)
            self._attached[ino] = path
            self.attaches += 1
            log.debug("netns %d attached via %s", ino, path)
        return len(self._attached)

    def tick(self) -> int:
        """Scan if ``interval`` has passed since the last scan; returns how many are attached."""
        if self._clock() >= self._next:
            return self.scan()
        return len(self._attached)
