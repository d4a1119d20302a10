"""The lab topology: client ↔ resolver ↔ upstream network namespaces joined by veth pairs.

::

    with Lab() as lab:                       # needs root; everything removed on exit
        up = lab.start_upstream()            # tests/lab/upstream.py in the upstream ns
        res = lab.start_dnsmasq()            # or lab.start_unbound(cache=False)
        rows = lab.query("client", "a.ok.lab.", "AAAA", server=res.v4)
        c2 = lab.add_client()                # another client namespace, own link to the resolver
        lab.remove_client(c2.name)

Addressing (the same in every run; namespaces isolate concurrent labs):

* upstream link: resolver ``198.18.100.1`` / ``fd00:100::1``, upstream ``198.18.100.2`` / ``fd00:100::2``
* client link k (k = 0 for the first client, 1, 2… for added ones): resolver
  ``198.18.{k+1}.1`` / ``fd00:{k+1}::1`` (dnsmasq's) and ``198.18.{k+1}.3`` / ``fd00:{k+1}::3``
  (unbound's), client ``198.18.{k+1}.2`` / ``fd00:{k+1}::2``

No routes are added (every peer is on a directly connected /24 or /64), no bridges.
Names carry a per-run prefix ``dl`` + 4 hex chars: namespaces ``{p}-cli``, ``{p}-res``,
``{p}-up``, ``{p}-cli{k}``; links (created directly inside the namespaces, never in the
host's) ``{p}c{k}`` (client end) / ``{p}r{k}`` (resolver end) and ``{p}ru`` / ``{p}u``.

Teardown (``close()``; also ``atexit`` and SIGTERM) kills every process spawned through the
lab by PID (SIGTERM, then SIGKILL after 3 s), deletes the namespaces it created by name,
removes ``/etc/netns/<name>/`` directories it created and its temp dir.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
NETNS_DIR = Path("/var/run/netns")
ETC_NETNS = Path("/etc/netns")
UPSTREAM_V4 = "198.18.100.2"
UPSTREAM_V6 = "fd00:100::2"
RESOLVER_UP_V4 = "198.18.100.1"
RESOLVER_UP_V6 = "fd00:100::1"
MAX_CLIENTS = 99
# Host parts of the resolver's addresses on each client link: .1 (dnsmasq by default) and .3
# (unbound by default), so both resolvers serve port 53 side by side.
RESOLVER_HOSTS = (1, 3)

_LIVE: set[Lab] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _cleanup_all() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _cleanup_all()
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _on_sigterm)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a host command (``ip …``) and capture text output."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True, slots=True)
class Namespace:
    """One lab namespace."""

    role: str  # client | resolver | upstream
    name: str
    index: int = 0  # client index k (0 for the first client)

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino


@dataclass(frozen=True, slots=True)
class Link:
    """One veth pair: ``a`` end in namespace ``ns_a``, ``b`` end in ``ns_b``."""

    ns_a: str
    a: str
    addr_a_v4: str
    addr_a_v6: str
    ns_b: str
    b: str
    addr_b_v4: str
    addr_b_v6: str


@dataclass(frozen=True, slots=True)
class Client:
    """A client namespace and its link to the resolver."""

    ns: Namespace
    link: Link

    @property
    def name(self) -> str:
        return self.ns.name

    @property
    def v4(self) -> str:
        return self.link.addr_a_v4

    @property
    def v6(self) -> str:
        return self.link.addr_a_v6

    @property
    def resolver_v4(self) -> str:
        return self.link.addr_b_v4

    @property
    def resolver_v6(self) -> str:
        return self.link.addr_b_v6


@dataclass(slots=True)
class Proc:
    """A background process started with :meth:`Lab.spawn`."""

    ns: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process (its own process group), SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)


class Lab:
    """Three namespaces (client, resolver, upstream) and the processes run in them."""

    def __init__(self, prefix: str | None = None, *, tmp_root: str | None = None) -> None:
        self.prefix = prefix or f"dl{secrets.token_hex(2)}"
        if len(self.prefix) > 8:
            raise ValueError("prefix too long for interface names")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir=tmp_root))
        self.namespaces: dict[str, Namespace] = {}
        self.clients: dict[str, Client] = {}
        self.procs: list[Proc] = []
        self._etc_dirs: list[Path] = []
        self._made_etc_netns = False
        self._next_client = 0
        self._closed = False
        self._lock = threading.Lock()
        self.client: Client
        self.resolver: Namespace
        self.upstream: Namespace
        self.upstream_link: Link
        self.upstream_proc: Proc | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> Lab:
        _install_handlers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self.resolver = self._add_ns("resolver", f"{self.prefix}-res")
            self.upstream = self._add_ns("upstream", f"{self.prefix}-up")
            self.upstream_link = self._veth(
                self.upstream.name,
                f"{self.prefix}u",
                UPSTREAM_V4,
                UPSTREAM_V6,
                self.resolver.name,
                f"{self.prefix}ru",
                RESOLVER_UP_V4,
                RESOLVER_UP_V6,
            )
            self.client = self.add_client(name=f"{self.prefix}-cli")
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything this lab created. Idempotent; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in list(self.namespaces.values()):
            self._del_ns(ns.name)
        for d in self._etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self._made_etc_netns:
            with contextlib.suppress(OSError):  # only if empty: others may use it now
                ETC_NETNS.rmdir()
        shutil.rmtree(self.tmp, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # --- topology ----------------------------------------------------------------------
    def _add_ns(self, role: str, name: str, index: int = 0) -> Namespace:
        run(["ip", "netns", "add", name])
        ns = Namespace(role, name, index)
        self.namespaces[name] = ns
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return ns

    def _del_ns(self, name: str) -> None:
        # Kill what we spawned in it first, so the namespace (and its veths) really goes.
        for proc in self.procs:
            if proc.ns == name:
                with contextlib.suppress(Exception):
                    proc.stop()
        run(["ip", "netns", "del", name], check=False)
        self.namespaces.pop(name, None)
        etc = ETC_NETNS / name
        if etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
            self._etc_dirs.remove(etc)

    def _veth(
        self,
        ns_a: str,
        a: str,
        a4: str,
        a6: str,
        ns_b: str,
        b: str,
        b4: str,
        b6: str,
    ) -> Link:
        run(["ip", "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b])
        for ns, dev, v4, v6 in ((ns_a, a, a4, a6), (ns_b, b, b4, b6)):
            run(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev])
            run(["ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        return Link(ns_a, a, a4, a6, ns_b, b, b4, b6)

    def add_client(self, name: str | None = None) -> Client:
        """Create a client namespace with its own veth link to the resolver namespace."""
        k = self._next_client
        if k >= MAX_CLIENTS:
            raise RuntimeError("too many lab clients")
        self._next_client += 1
        ns_name = name or f"{self.prefix}-cli{k}"
        ns = self._add_ns("client", ns_name, k)
        link = self._veth(
            ns_name,
            f"{self.prefix}c{k}",
            f"198.18.{k + 1}.2",
            f"fd00:{k + 1}::2",
            self.resolver.name,
            f"{self.prefix}r{k}",
            f"198.18.{k + 1}.1",
            f"fd00:{k + 1}::1",
        )
        for host in RESOLVER_HOSTS[1:]:  # further resolver addresses on the same link
            run(["ip", "-n", self.resolver.name, "addr", "add", f"198.18.{k + 1}.{host}/24", "dev", link.b])
            run(
                [
                    "ip",
                    "-n",
                    self.resolver.name,
                    "addr",
                    "add",
                    f"fd00:{k + 1}::{host}/64",
                    "dev",
                    link.b,
                    "nodad",
                ]
            )
        client = Client(ns, link)
        self.clients[ns_name] = client
        return client

    def add_clients(self, n: int) -> list[Client]:
        """``n`` more client namespaces (e.g. the "ten clients" scenarios)."""
        return [self.add_client() for _ in range(n)]

    def remove_client(self, name: str) -> None:
        """Delete a client namespace (its veth pair goes with it)."""
        self.clients.pop(name, None)
        self._del_ns(name)

    def ns_name(self, ns: str) -> str:
        """Accept a role (``client``/``resolver``/``upstream``) or a namespace name."""
        if ns == "client":
            return self.client.name
        if ns == "resolver":
            return self.resolver.name
        if ns == "upstream":
            return self.upstream.name
        if ns in self.namespaces:
            return ns
        raise KeyError(f"not a namespace of this lab: {ns}")

    def resolver_listen(self, host: int = 1, v6: bool = True) -> list[str]:
        """The resolver's client-facing addresses ``198.18.{k+1}.{host}`` (and v6) on every client link."""
        if host not in RESOLVER_HOSTS:
            raise ValueError(f"resolver host part must be one of {RESOLVER_HOSTS}")
        out: list[str] = []
        for c in self.clients.values():
            k = c.ns.index
            out.append(f"198.18.{k + 1}.{host}")
            if v6:
                out.append(f"fd00:{k + 1}::{host}")
        return out

    @property
    def resolver_v4(self) -> str:
        return self.client.resolver_v4

    @property
    def resolver_v6(self) -> str:
        return self.client.resolver_v6

    @property
    def upstream_v4(self) -> str:
        return UPSTREAM_V4

    @property
    def upstream_v6(self) -> str:
        return UPSTREAM_V6

    def link_names(self) -> list[str]:
        names = [self.upstream_link.a, self.upstream_link.b]
        for c in self.clients.values():
            names += [c.link.a, c.link.b]
        return names

    def set_resolv_conf(
        self, ns: str, nameservers: Sequence[str], search: Sequence[str] = (), options: Sequence[str] = ()
    ) -> Path:
        """Write /etc/netns/<ns>/resolv.conf (``ip netns exec`` bind-mounts it over /etc/resolv.conf)."""
        name = self.ns_name(ns)
        d = ETC_NETNS / name
        if d not in self._etc_dirs:
            if d.exists():
                raise RuntimeError(f"{d} exists and is not ours")
            if not ETC_NETNS.exists():
                ETC_NETNS.mkdir()
                self._made_etc_netns = True
            d.mkdir()
            self._etc_dirs.append(d)
        lines = [f"nameserver {s}" for s in nameservers]
        if search:
            lines.append("search " + " ".join(search))
        if options:
            lines.append("options " + " ".join(options))
        path = d / "resolv.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- processes ---------------------------------------------------------------------
    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        full = dict(os.environ)
        full["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full.get("PYTHONPATH", "")
        full.pop("PYTHONSAFEPATH", None)
        if env:
            full.update(env)
        return full

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace (``ip netns exec``) and wait; text output captured."""
        cmd = ["ip", "netns", "exec", self.ns_name(ns), *argv]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=REPO_ROOT,
            env=self._env(env),
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def spawn(
        self, ns: str, argv: Sequence[str], *, env: dict[str, str] | None = None, tag: str = ""
    ) -> Proc:
        """Start a background process in a namespace; it is killed at teardown.

        stdout and stderr go to ``<tmp>/<tag or argv0>-<n>.log`` (:meth:`Proc.output`).
        """
        if self._closed:
            raise RuntimeError("lab closed")
        name = self.ns_name(ns)
        base = tag or Path(argv[0]).name
        log_path = self.tmp / f"{base}-{len(self.procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by Proc.stop
        popen = subprocess.Popen(
            ["ip", "netns", "exec", name, *argv],  # ip execs argv: the PID is the command's
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=self._env(env),
            start_new_session=True,
        )
        proc = Proc(name, list(argv), popen, log_path, log)
        self.procs.append(proc)
        return proc

    def python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def query(
        self, ns: str, *args: str, server: str | None = None, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """Run tests/lab/client.py in a namespace; return its JSON result rows.

        ``args`` are client arguments (names, types, flags), e.g.
        ``lab.query("client", "--tcp", "a.ok.lab.", "AAAA", server=lab.resolver_v6)``.
        """
        argv = list(args) if server is None else ["--server", server, *args]
        out = self.exec(ns, self.python("tests.lab.client", *argv), timeout=timeout)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    # --- servers -----------------------------------------------------------------------
    def start_upstream(self, *, port: int = 53, ready_timeout: float = 10) -> Proc:
        """Start tests/lab/upstream.py on the upstream's v4 and v6 address; wait until bound."""
        ready = self.tmp / f"upstream-{len(self.procs)}.ready"
        self.upstream_log = self.tmp / "upstream-queries.jsonl"
        argv = self.python(
            "tests.lab.upstream",
            "--listen",
            UPSTREAM_V4,
            "--listen",
            UPSTREAM_V6,
            "--port",
            str(port),
            "--log",
            str(self.upstream_log),
            "--ready-file",
            str(ready),
        )
        proc = self.spawn("upstream", argv, tag="upstream")
        _wait(lambda: ready.exists(), ready_timeout, lambda: f"upstream not ready:\n{proc.output()}", proc)
        self.upstream_proc = proc
        return proc

    def upstream_queries(self) -> list[dict[str, Any]]:
        """What the upstream received so far (its JSON-lines log)."""
        try:
            text = self.upstream_log.read_text()
        except (AttributeError, OSError):
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def listening(self, ns: str, port: int = 53) -> set[tuple[str, str]]:
        """(proto, address) pairs listening on ``port`` in a namespace (from ``ss``)."""
        out = self.exec(ns, ["ss", "-H", "-l", "-n", "-u", "-t"], check=False).stdout
        found: set[tuple[str, str]] = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 5:
                continue
            local = parts[4]
            addr, _, p = local.rpartition(":")
            if p != str(port):
                continue
            addr = addr.strip("[]").split("%")[0]
            found.add((parts[0], addr))
        return found

    def wait_listening(self, ns: str, addrs: Sequence[str], port: int = 53, timeout: float = 10) -> None:
        def ok() -> bool:
            have = self.listening(ns, port)
            return all(("udp", a) in have and ("tcp", a) in have for a in addrs)

        _wait(ok, timeout, lambda: f"nothing listening on {addrs} port {port} in {ns}")

    def start_dnsmasq(self, **kw: Any) -> Dnsmasq:
        return Dnsmasq(self, **kw).start()

    def start_unbound(self, **kw: Any) -> Unbound:
        return Unbound(self, **kw).start()


def _wait(cond: Any, timeout: float, msg: Any, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and not proc.alive():
            break
        time.sleep(0.05)
    raise RuntimeError(msg())


class Resolver:
    """Common part of the dnsmasq and unbound helpers."""

    kind = "resolver"
    default_host = 1

    def __init__(
        self,
        lab: Lab,
        *,
        cache: bool = True,
        host: int | None = None,
        listen: Sequence[str] | None = None,
        upstream: str = UPSTREAM_V4,
        port: int = 53,
    ) -> None:
        self.lab = lab
        self.cache = cache
        self.host = self.default_host if host is None else host
        self.listen = list(listen) if listen is not None else lab.resolver_listen(self.host)
        k = lab.client.ns.index
        self.v4 = f"198.18.{k + 1}.{self.host}"  # its address on the first client's link
        self.v6 = f"fd00:{k + 1}::{self.host}"
        self.upstream = upstream
        self.port = port
        self.dir = lab.tmp / f"{self.kind}-{secrets.token_hex(2)}"
        self.dir.mkdir()
        self.proc: Proc | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    # dnsmasq lists the interfaces at start and gives up if one vanishes meanwhile, which
    # happens right after a client namespace is deleted: the kernel removes the peer veth
    # in the resolver's namespace asynchronously. Only that message is retried.
    TRANSIENT_START_ERRORS = ("failed to find list of interfaces",)

    def start(self) -> Self:
        for attempt in range(4):
            self.proc = self.lab.spawn("resolver", self.argv(), tag=self.kind)
            try:
                self.lab.wait_listening("resolver", self.listen, self.port)
                return self
            except RuntimeError as exc:
                output = f"{self.proc.output()}\n{self.log()}"
                transient = any(e in output for e in self.TRANSIENT_START_ERRORS)
                if not transient or attempt == 3:
                    raise RuntimeError(f"{exc}\n{self.kind} output:\n{output}") from None
                self.stop()
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, listen: Sequence[str] | None = None) -> None:
        """Stop and start again: empties the cache, and listens on ``listen`` (default: this
        resolver's address on every client link the lab has now, e.g. after :meth:`Lab.add_client`)."""
        self.stop()
        self.listen = list(listen) if listen is not None else self.lab.resolver_listen(self.host)
        self.start()

    def clear_cache(self) -> None:
        self.restart()

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Dnsmasq(Resolver):
    """Debian's dnsmasq, forwarding everything to the upstream; no system config read."""

    kind = "dnsmasq"

    def argv(self) -> list[str]:
        args = [
            "/usr/sbin/dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--group=root",
            f"--port={self.port}",
            f"--pid-file={self.dir / 'pid'}",
            f"--log-facility={self.dir / 'log'}",
            "--log-queries",
            f"--server=/lab/{self.upstream}",
            f"--server={self.upstream}",
        ]
        args += [f"--listen-address={a}" for a in self.listen]
        if not self.cache:
            args += ["--cache-size=0", "--no-negcache"]
        return args

    def clear_cache(self) -> None:
        """SIGHUP: dnsmasq empties its cache (and re-reads nothing else here)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)


class Unbound(Resolver):
    """Debian's unbound with its own config file, forwarding ``.`` to the upstream."""

    kind = "unbound"
    default_host = 3

    def config(self) -> str:
        d = self.dir
        lines = [
            "server:",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d / "pid"}"',
            f'  logfile: "{d / "log"}"',
            "  use-syslog: no",
            "  do-daemonize: no",
            "  verbosity: 1",
            "  log-queries: yes",
            "  num-threads: 1",
            "  so-reuseport: no",
            f"  port: {self.port}",
            "  do-ip4: yes",
            "  do-ip6: yes",
            "  do-udp: yes",
            "  do-tcp: yes",
            *[f"  interface: {a}" for a in self.listen],
            "  access-control: 198.18.0.0/15 allow",
            "  access-control: fd00::/8 allow",
            "  do-not-query-localhost: no",
            '  module-config: "iterator"',
            '  domain-insecure: "lab."',
            "  qname-minimisation: no",
            "  prefetch: no",
            "  minimal-responses: yes",
            "  outgoing-range: 64",
            "  infra-keep-probing: yes",
            "remote-control:",
            "  control-enable: yes",
            f'  control-interface: "{d / "control.sock"}"',
            "  control-use-cert: no",
            "forward-zone:",
            '  name: "."',
            f"  forward-addr: {self.upstream}",
        ]
        if not self.cache:
            idx = lines.index("remote-control:")
            lines[idx:idx] = ["  cache-max-ttl: 0", "  cache-max-negative-ttl: 0", "  serve-expired: no"]
        return "\n".join(lines) + "\n"

    def argv(self) -> list[str]:
        conf = self.dir / "unbound.conf"
        conf.write_text(self.config())
        return ["/usr/sbin/unbound", "-d", "-c", str(conf)]

    def control(self, *args: str) -> str:
        """``unbound-control`` over the lab's unix socket, e.g. ``control("flush_zone", "lab.")``."""
        conf = self.dir / "unbound.conf"
        out = self.lab.exec("resolver", ["unbound-control", "-c", str(conf), *args], check=True)
        return out.stdout

    def clear_cache(self) -> None:
        """Flush the message/rrset caches and the infra (server health) cache."""
        if shutil.which("unbound-control"):
            self.control("flush_zone", ".")
            self.control("flush_infra", "all")
        else:
            self.restart()
