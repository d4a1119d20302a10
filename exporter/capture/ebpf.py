"""Live capture: load bpf/dns.bpf.c once, attach it in each network namespace, read the ring buffer.

This is the only module that imports bcc, and it does so inside ``EbpfCapture.__init__``,
so the package imports (and pcap replay works) on a machine without bcc.

How one compiled program serves every namespace (and works on 5.15, where socket filters
cannot call ``bpf_get_netns_cookie``): the shared program ``dns_filter`` sits in the prog
array ``dispatch``. Each namespace gets an AF_PACKET socket with its own 8-instruction
dispatcher, assembled here (no compiler) and loaded with the bpf() syscall::

    w2 = <netns inode>
    *(u32 *)(r1 + offsetof(struct __sk_buff, cb[0])) = w2
    r2 = <fd of the prog array "dispatch">      (ld_imm64, BPF_PSEUDO_MAP_FD)
    r3 = 0
    call bpf_tail_call
    r0 = 0
    exit

The kernel clears ``skb->cb`` before it runs a socket filter, and socket filters may write
``cb[0..4]``; ``dns_filter`` reads the inode back from ``cb[0]``.

The ring buffer is consumed by libbpf (through libbcc, with the right memory barriers on
every architecture) calling one ctypes callback per event, registered directly (without
bcc's Python wrapper frame); the callback copies the record with ``ctypes.string_at`` and
decodes it with one precompiled ``struct`` unpack. ``bench/ringbuf.py`` measures this path
against ctypes field access and against walking an mmap of the ring in Python (slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.capture.events import (
    AGG_BUCKETS,
    AGG_KEY,
    AGG_VAL,
    KIND_OFFSET,
    KIND_PACKET,
    KIND_QUERY_NOTICE,
    PENDING_KEY,
    PENDING_VAL,
    AggKey,
    AggVal,
    PendingKey,
    PendingVal,
    QueryInfo,
    decode_event,
    decode_query_info,
    layout_mismatches,
    struct_mismatches,
)
from exporter.records import Segment

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
SOURCE = "dns.bpf.c"

MAX_PORTS = 8
# How often the reader drains the ring buffer when the kernel does not wake it per record.
# An 8 MiB ring holds ~50k typical DNS events: 10 ms leaves a wide margin even at 100k/s.
RING_TICK_MS = 10
MAX_PAYLOAD_LIMIT = 4096

DEFAULT_RINGBUF_PAGES = 2048  # 8 MiB with 4 KiB pages
MAX_RINGBUF_PAGES = 1 << 18  # 1 GiB with 4 KiB pages (the kernel's size is a u32 of bytes)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# kernel counters in the per-CPU array "counters" (bpf/dns.bpf.c CNT_*)
COUNTER_NAMES = (
    "lost",
    "fragments_skipped",
    "malformed",
    "copy_errors",
    "events",
    # KERNEL_PAIRING only (zero otherwise)
    "kernel_queries",  # UDP queries that entered the kernel's pending table
    "kernel_retransmits",  # queries that repeated a pending one (no event)
    "kernel_paired",  # responses paired in the kernel (one PAIR event each)
    "kernel_superseded",  # pending queries replaced by a new question on the same key
    "kernel_table_full",  # queries handed to user space because the pending table was full
    "kernel_notices",  # QUERY_NOTICE records: server queries announced (they went upstream)
    "kernel_aggregated",  # exchanges counted in the kernel's agg map, no record (KERNEL_AGG)
)

_CLONE_NEWNET = 0x40000000
_ETH_P_ALL = 0x0003
_SO_ATTACH_BPF = 50
_BPF_MAP_CREATE = 0
_BPF_MAP_UPDATE_ELEM = 2
_BPF_PROG_LOAD = 5
_BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_NOEXIST = 1
_BPF_PROG_TYPE_SOCKET_FILTER = 1
_BPF_FUNC_tail_call = 12
_BPF_PSEUDO_MAP_FD = 1
_SKB_CB0 = 48  # offsetof(struct __sk_buff, cb[0]), stable uapi
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}

_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HDR = 8

_CAP_NET_RAW = 13
_CAP_SYS_ADMIN = 21
_CAP_BPF = 39

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long


class CaptureError(Exception):
    """A start-up problem, with a one-line message saying what to do."""


class _Insn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint8),
        ("regs", ctypes.c_uint8),  # dst_reg in the low nibble, src_reg in the high nibble
        ("off", ctypes.c_int16),
        ("imm", ctypes.c_int32),
    )


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> _Insn:
    return _Insn(code, (src << 4) | dst, off, ctypes.c_int32(imm).value)


def dispatcher_insns(netns_inode: int, prog_array_fd: int) -> ctypes.Array[_Insn]:
    """The per-namespace dispatcher: stamp the inode into skb->cb[0], tail-call dispatch[0]."""
    insns = (
        _insn(0xB4, dst=2, imm=netns_inode),  # w2 = inode (BPF_ALU|BPF_MOV|BPF_K, zero-extends)
        _insn(0x63, dst=1, src=2, off=_SKB_CB0),  # *(u32 *)(r1 + cb0) = w2 (BPF_STX|BPF_MEM|BPF_W)
        _insn(0x18, dst=2, src=_BPF_PSEUDO_MAP_FD, imm=prog_array_fd),  # r2 = map (BPF_LD|BPF_DW|BPF_IMM)
        _insn(0x00),  # second half of ld_imm64
        _insn(0xB7, dst=3, imm=0),  # r3 = 0
        _insn(0x85, imm=_BPF_FUNC_tail_call),  # call bpf_tail_call
        _insn(0xB7, dst=0, imm=0),  # r0 = 0: only reached if dispatch[0] is empty
        _insn(0x95),  # exit
    )
    return (_Insn * len(insns))(*insns)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise CaptureError(f"unsupported architecture {platform.machine()} (x86_64 and arm64 are supported)")
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr))))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def load_dispatcher(netns_inode: int, prog_array_fd: int) -> int:
    """Load the dispatcher for one namespace; returns its program fd (the caller closes it)."""
    insns = dispatcher_insns(netns_inode, prog_array_fd)
    license_ = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(72)  # up to expected_attach_type; the rest stays zero
    struct.pack_into(
        "<IIQQIIQII16s",
        attr,
        0,
        _BPF_PROG_TYPE_SOCKET_FILTER,
        len(insns),
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log_buf),
        ctypes.addressof(log_buf),
        0,
        0,
        b"dnsotel_disp",
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError as exc:
        verifier = log_buf.value.decode(errors="replace").strip().replace("\n", " | ")
        raise OSError(exc.errno, f"loading the netns dispatcher failed: {exc.strerror}: {verifier}") from None


def _thread_netns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def packet_socket_in(netns_fd: int) -> socket.socket:
    """An AF_PACKET/SOCK_RAW/ETH_P_ALL socket created inside the namespace ``netns_fd``.

    Enters the namespace on the calling thread only, and always returns to the thread's
    original namespace, also on error.
    """
    home = _thread_netns()
    try:
        _setns(netns_fd)
        try:
            return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        finally:
            try:
                _setns(home)
            except OSError as exc:  # pragma: no cover - would leave this thread in the wrong netns
                log.critical("cannot return to the original network namespace: %s", exc)
                os.abort()
    finally:
        os.close(home)


def _clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_BOOTTIME, from the tightest of a few samples."""
    best: tuple[int, int] | None = None
    for _ in range(7):
        b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b2 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        cand = (b2 - b1, r - (b1 + b2) // 2)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1]


def _missing_caps() -> list[str]:
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("CapEff:"))
        eff = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return [] if os.geteuid() == 0 else ["root"]
    names = {_CAP_SYS_ADMIN: "CAP_SYS_ADMIN", _CAP_NET_RAW: "CAP_NET_RAW"}
    missing = [n for bit, n in names.items() if not eff & (1 << bit)]
    if not eff & (1 << _CAP_BPF) and not eff & (1 << _CAP_SYS_ADMIN):
        missing.insert(0, "CAP_BPF")
    return missing


def _headers_present() -> bool:
    rel = os.uname().release
    candidates = [
        os.environ.get("BCC_KERNEL_SOURCE", ""),
        f"/lib/modules/{rel}/build",
        f"/lib/modules/{rel}/source",
    ]
    if any(c and os.path.isdir(os.path.join(c, "include")) for c in candidates):
        return True
    return os.path.exists("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: bcc unpacks it


def _size_text(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def build_cflags(
    dns_ports: Iterable[int],
    max_payload: int,
    ringbuf_pages: int,
    bpf_dir: Path,
    kernel_pairing: bool = False,
    max_pending: int = 65_536,
    aggregate: Aggregation | None = None,
) -> list[str]:
    ports = list(dns_ports)
    if not 1 <= len(ports) <= MAX_PORTS or any(not 1 <= p <= 65535 for p in ports):
        raise CaptureError(f"--dns-ports takes 1 to {MAX_PORTS} ports in 1..65535, got {ports}")
    if not 1 <= max_payload <= MAX_PAYLOAD_LIMIT:
        raise CaptureError(f"max payload must be 1..{MAX_PAYLOAD_LIMIT} bytes, got {max_payload}")
    if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
        raise CaptureError(f"ring buffer pages must be a power of two, got {ringbuf_pages}")
    if ringbuf_pages > MAX_RINGBUF_PAGES:
        raise CaptureError(
            f"a ring buffer of {ringbuf_pages} pages ({_size_text(ringbuf_pages * PAGE_SIZE)}) is too large: "
            f"at most {MAX_RINGBUF_PAGES} pages ({_size_text(MAX_RINGBUF_PAGES * PAGE_SIZE)})"
        )
    if not 1 <= max_pending <= 10_000_000:
        raise CaptureError(f"max pending must be 1..10000000, got {max_pending}")
    flags = [
        f"-I{bpf_dir}",
        f"-DDNS_PORTS={','.join(str(p) for p in ports)}",
        f"-DMAX_PAYLOAD={max_payload}",
        f"-DRINGBUF_PAGES={ringbuf_pages}",
    ]
    if kernel_pairing:
        flags += ["-DKERNEL_PAIRING=1", f"-DMAX_PENDING={max_pending}"]
    if aggregate is not None:
        if not kernel_pairing:
            raise CaptureError("in-kernel aggregation needs kernel pairing")
        flags += aggregate.cflags()
    return flags


@dataclass(frozen=True, slots=True)
class Aggregation:
    """In-kernel aggregation (``-DKERNEL_AGG``): exchanges the kernel proves ordinary --
    answered NOERROR with answers, no TC, faster than ``slow_ns`` -- are counted per series
    in the "agg" map (histogram over ``bounds_ns``) instead of being written to the ring."""

    slow_ns: int
    bounds_ns: tuple[int, ...]
    max_series: int = 4096

    def cflags(self) -> list[str]:
        if len(self.bounds_ns) != AGG_BUCKETS - 1 or list(self.bounds_ns) != sorted(set(self.bounds_ns)):
            raise CaptureError(f"aggregation needs {AGG_BUCKETS - 1} increasing bucket bounds")
        if not 0 < self.slow_ns < 1 << 63 or not 1 <= self.max_series <= 1 << 20:
            raise CaptureError("aggregation needs a positive slow threshold and 1..1048576 series")
        # the bucket index as bisect_left over the bounds: how many bounds are below l
        index = "+".join(f"((l)>{b}ULL)" for b in self.bounds_ns)
        return [
            "-DKERNEL_AGG=1",
            f"-DAGG_SLOW_NS={self.slow_ns}ULL",
            f"-DAGG_MAX={self.max_series}",
            f"-DAGG_BUCKET_INDEX(l)=({index})",
        ]


def probe_ringbuf(nbytes: int) -> None:
    """Create (and close) a ring buffer map of ``nbytes`` with bpf(BPF_MAP_CREATE).

    bcc reports a map the kernel refuses as "Failed to compile BPF module" (libbcc prints
    the real error on stderr), so the ring buffer, by far the largest map, is tried first
    and a refusal becomes a one-line ``CaptureError``.
    """
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<IIIII", attr, 0, _BPF_MAP_TYPE_RINGBUF, 0, 0, nbytes, 0)
    try:
        fd = _bpf(_BPF_MAP_CREATE, attr)
    except OSError as exc:
        hint = {
            errno.ENOMEM: "not enough memory (or the memory cgroup / memlock limit): use a smaller ring",
            errno.EPERM: "not permitted (needs CAP_BPF, or raise the memlock limit: ulimit -l unlimited)",
            errno.EINVAL: "the size must be a power-of-two number of pages",
        }.get(exc.errno or 0, "")
        raise CaptureError(
            f"the kernel refused a {_size_text(nbytes)} ring buffer: {exc.strerror}"
            + (f" ({hint})" if hint else "")
        ) from None
    os.close(fd)


class EbpfCapture:
    """DNS packets of the attached network namespaces, as ``Segment`` objects.

    ``poll()`` and ``attach()``/``detach()`` are meant to be called from one thread (the
    capture loop, which also runs ``NetnsWatcher.tick()``).
    """

    def __init__(
        self,
        on_segment: Callable[[Segment], None],
        dns_ports: Iterable[int] = (53,),
        max_payload: int = 512,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        bpf_dir: Path | str | None = None,
        *,
        on_paired: Callable[[int, Segment, QueryInfo | None], None] | None = None,
        max_pending: int = 65_536,
        wall_offset_ns: int | None = None,
        aggregate: Aggregation | None = None,
    ) -> None:
        """``on_paired`` turns on kernel pairing: UDP queries wait in the kernel's pending
        table, and ``on_paired(kind, segment, info)`` gets each PAIR record (``segment`` is
        the response) and SUPERSEDED record (``segment`` is the abandoned query, ``info.ts_ns``
        the time it was superseded), and ``on_paired(KIND_QUERY_NOTICE, segment, None)`` each
        server-side query the kernel announces because the resolver went upstream for its
        question or queued a second query for it (``segment`` is the query: its header and
        normalized question). Everything else still reaches ``on_segment``.

        ``aggregate`` (with ``on_paired``) turns on in-kernel aggregation: ordinary
        exchanges produce no record; :meth:`aggregates` reads their histograms."""
        self._on_segment = on_segment
        self._on_paired = on_paired
        self.kernel_pairing = on_paired is not None
        self.max_payload = max_payload
        bpf_path = Path(bpf_dir) if bpf_dir is not None else BPF_DIR
        self.aggregating = aggregate is not None
        cflags = build_cflags(
            dns_ports, max_payload, ringbuf_pages, bpf_path, self.kernel_pairing, max_pending, aggregate
        )
        missing = _missing_caps()
        if missing:
            raise CaptureError(
                f"capture needs root or {'+'.join(missing)} (run as root, or grant them to the container)"
            )
        try:
            import bcc
        except ImportError:
            raise CaptureError(
                "bcc is not installed: apt-get install python3-bpfcc (or make setup)"
            ) from None
        if not _headers_present():
            rel = os.uname().release
            raise CaptureError(
                f"kernel headers not found for {rel}: apt-get install linux-headers-amd64 and link "
                f"/lib/modules/{rel}/build to them (or make setup)"
            )
        try:
            soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            if soft != resource.RLIM_INFINITY:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (OSError, ValueError):
            pass  # kernels >= 5.11 account BPF memory to the cgroup instead
        probe_ringbuf(ringbuf_pages * PAGE_SIZE)
        t0 = time.monotonic()
        try:
            self._bpf: Any = bcc.BPF(src_file=str(bpf_path / SOURCE).encode(), cflags=cflags)
        except Exception as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "map" in text.lower() or "Operation not permitted" in text:
                raise CaptureError(
                    f"the kernel refused the BPF maps ({text}): raise the memlock limit "
                    "(ulimit -l unlimited) or use a smaller ring buffer"
                ) from None
            raise CaptureError(
                f"compiling {bpf_path / SOURCE} failed: {text} (see the compiler output above)"
            ) from None
        try:
            fn = self._bpf.load_func(b"dns_filter", bcc.BPF.SOCKET_FILTER)
        except Exception as exc:
            self._bpf.cleanup()
            raise CaptureError(
                f"the kernel rejected the DNS socket filter ({exc}); dnsotel needs Linux 5.15 or newer"
            ) from None
        self.compile_seconds = time.monotonic() - t0
        try:
            compiled = self._bpf[b"scratch"].Leaf._type_  # per-CPU array: Leaf is struct dns_event * ncpus
            problems = layout_mismatches(compiled, max_payload)
            if problems:
                raise CaptureError(
                    "bpf/dns_event.h and exporter/capture/events.py disagree: " + "; ".join(problems)
                )
            if self.kernel_pairing:
                problems = struct_mismatches("pending_key", self._bpf[b"pending"].Key, PendingKey)
                problems += struct_mismatches("pending_val", self._bpf[b"pending"].Leaf, PendingVal)
                if self.aggregating:
                    problems += struct_mismatches("agg_key", self._bpf[b"agg"].Key, AggKey)
                    problems += struct_mismatches("agg_val", self._bpf[b"agg"].Leaf._type_, AggVal)
                if problems:
                    raise CaptureError(
                        "bpf/dns_event.h and exporter/capture/events.py disagree: " + "; ".join(problems)
                    )
                self._pending_fd = int(self._bpf[b"pending"].map_fd)
                if self.aggregating:
                    self._agg_fd = int(self._bpf[b"agg"].map_fd)
            self._dispatch = self._bpf[b"dispatch"]
            self._dispatch[ctypes.c_int(0)] = ctypes.c_int(fn.fd)
            self._counters = self._bpf[b"counters"]
            self._ring_fd = int(self._bpf[b"events"].map_fd)
        except CaptureError:
            self._bpf.cleanup()
            raise
        self._socks: dict[int, socket.socket] = {}
        # a second capture in one process can share the first's offset (tests comparing them)
        self.wall_offset_ns = _clock_offset_ns() if wall_offset_ns is None else wall_offset_ns
        self._error: BaseException | None = None
        self._cb = self._make_callback(bcc.libbcc._RINGBUF_CB_TYPE)
        self._lib = bcc.libbcc.lib
        self._ring: int | None = self._lib.bpf_new_ringbuf(self._ring_fd, self._cb, None)
        if not self._ring:
            self._bpf.cleanup()
            raise CaptureError(
                "opening the ring buffer failed (raise the memlock limit: ulimit -l unlimited)"
            )
        self.attach_failures = 0

    # -- namespaces ---------------------------------------------------------------------

    @property
    def attached(self) -> set[int]:
        return set(self._socks)

    def attach(self, netns_path: str, inode: int) -> None:
        """Capture in the namespace at ``netns_path`` (whose inode must be ``inode``).

        Raises OSError when the namespace is gone or is not the expected one (a PID reused).
        """
        if inode in self._socks:
            return
        nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            got = os.fstat(nsfd).st_ino
            if got != inode:
                raise OSError(errno.ESTALE, f"{netns_path} is netns {got} now, not {inode}")
            prog = load_dispatcher(inode, self._dispatch.map_fd)
            try:
                sock = packet_socket_in(nsfd)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
                    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_BPF, prog)
                    _drain_socket(sock)  # what arrived between socket() and the attach
                except BaseException:
                    sock.close()
                    raise
            finally:
                os.close(prog)  # the socket holds its own reference to the program
        finally:
            os.close(nsfd)
        self._socks[inode] = sock

    def detach(self, inode: int) -> None:
        sock = self._socks.pop(inode, None)
        if sock is not None:
            sock.close()

    # -- events -------------------------------------------------------------------------

    def _make_callback(self, cb_type: Any) -> Any:
        string_at = ctypes.string_at
        decode = decode_event
        on_segment = self._on_segment
        wall = self.wall_offset_ns
        on_paired = self._on_paired

        if on_paired is None:

            def on_event(_ctx: int | None, data: int, size: int) -> int:
                try:
                    on_segment(decode(string_at(data, size), 0, wall))
                except BaseException as exc:  # re-raised by poll(); ctypes would only print it
                    self._error = exc
                    return -1  # stop consuming; the rest stays in the ring for the next poll
                return 0

            return cb_type(on_event)

        query_info = decode_query_info

        def on_event_kp(_ctx: int | None, data: int, size: int) -> int:
            try:
                buf = string_at(data, size)
                kind = buf[KIND_OFFSET]
                if kind == KIND_PACKET:
                    on_segment(decode(buf, 0, wall))
                elif kind == KIND_QUERY_NOTICE:
                    on_paired(kind, decode(buf, 0, wall), None)
                else:
                    on_paired(kind, decode(buf, 0, wall), query_info(buf, 0, wall))
            except BaseException as exc:
                self._error = exc
                return -1
            return 0

        return cb_type(on_event_kp)

    @property
    def fd(self) -> int:
        """The ring buffer's map fd: readable when events are waiting (for an outer event loop)."""
        return self._ring_fd

    def poll(self, timeout_ms: int = 100) -> int:
        """Deliver waiting events to ``on_segment``, waiting up to ``timeout_ms`` for the first.

        The kernel writes records without waking the reader (``RINGBUF_FLAGS``), so this
        drains what is there and otherwise sleeps in ``RING_TICK_MS`` steps, draining after
        each: one wake-up per tick for a whole batch instead of one per packet. Returns how
        many events were delivered. An exception raised by ``on_segment`` is re-raised
        here, after the events before it were consumed.
        """
        if self._ring is None:
            raise CaptureError("capture is closed")
        ring, lib = self._ring, self._lib
        n = int(lib.bpf_consume_ringbuf(ring))
        left = timeout_ms
        while n <= 0 and left > 0 and self._error is None:
            step = min(left, RING_TICK_MS)
            # sleeps `step` ms (no wake-up comes for records written without one) and
            # drains anything a forced wake-up would announce, then drain what accumulated
            n = max(int(lib.bpf_poll_ringbuf(ring, step)), 0)
            n += int(lib.bpf_consume_ringbuf(ring))
            left -= step
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return max(n, 0)

    def counters(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs: lost, fragments_skipped, malformed, copy_errors, events."""
        out: dict[str, int] = {}
        for i, name in enumerate(COUNTER_NAMES):
            out[name] = int(sum(self._counters[ctypes.c_int(i)]))
        return out

    # -- the kernel's pending-query table (kernel pairing) ---------------------------------

    def pending_entries(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of the kernel's pending table, as raw struct bytes.

        One BPF_MAP_LOOKUP_BATCH per ``chunk`` entries. Not a snapshot: entries added or
        removed meanwhile may or may not be in the list.
        """
        if not self.kernel_pairing:
            return []
        return _lookup_batch(self._pending_fd, PENDING_KEY.size, PENDING_VAL.size, chunk)

    def aggregates(self) -> dict[bytes, tuple[int, ...]]:
        """The kernel's aggregated series: ``agg_key`` bytes -> the ``agg_val`` fields summed
        over CPUs (count, packets, sum_ns, min_ns, max_ns, then the bucket counts),
        cumulative since load. Empty without in-kernel aggregation."""
        if not self.aggregating:
            return {}
        vsz = AGG_VAL.size
        ncpu = _possible_cpus()
        out: dict[bytes, tuple[int, ...]] = {}
        for key, raw in _lookup_batch(self._agg_fd, AGG_KEY.size, vsz * ncpu, 256):
            live = [v for v in (AGG_VAL.unpack_from(raw, c * vsz) for c in range(ncpu)) if v[0]]
            if not live:
                continue
            summed = [sum(col) for col in zip(*live, strict=True)]
            summed[3] = min(v[3] for v in live)
            summed[4] = max(v[4] for v in live)
            out[key] = tuple(summed)
        return out

    def take_pending(self, key: bytes) -> bytes | None:
        """Delete one pending entry and return its value, or None when it is gone already
        (a response took it): atomic, so a query is reported by exactly one side."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(PENDING_VAL.size)
        attr = ctypes.create_string_buffer(32)
        struct.pack_into(
            "<IIQQQ", attr, 0, self._pending_fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0
        )
        try:
            _bpf(_BPF_MAP_LOOKUP_AND_DELETE_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return vbuf.raw

    def restore_pending(self, key: bytes, value: bytes) -> bool:
        """Put back an entry ``take_pending`` removed, unless the key is pending again."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        attr = ctypes.create_string_buffer(32)
        struct.pack_into(
            "<IIQQQ",
            attr,
            0,
            self._pending_fd,
            0,
            ctypes.addressof(kbuf),
            ctypes.addressof(vbuf),
            _BPF_NOEXIST,
        )
        try:
            _bpf(_BPF_MAP_UPDATE_ELEM, attr)
        except OSError:
            return False
        return True

    def lost(self) -> int:
        """Events dropped because the ring buffer was full (never silent: export this)."""
        return int(sum(self._counters[ctypes.c_int(0)]))

    def close(self) -> None:
        for inode in list(self._socks):
            self.detach(inode)
        if self._ring is not None:
            self._lib.bpf_free_ringbuf(self._ring)
            self._ring = None
        self._bpf.cleanup()

    def __enter__(self) -> EbpfCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain_socket(sock: socket.socket) -> None:
    sock.setblocking(False)
    for _ in range(10000):
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return


def _lookup_batch(map_fd: int, ksz: int, vsz: int, chunk: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, as raw bytes: one BPF_MAP_LOOKUP_BATCH per
    ``chunk`` entries (``vsz``: the value size as the syscall sees it; for a per-CPU map,
    the value rounded up to 8 bytes times the possible CPUs). Not a snapshot: entries added
    or removed meanwhile may or may not be in the list."""
    while True:
        keys = ctypes.create_string_buffer(ksz * chunk)
        vals = ctypes.create_string_buffer(vsz * chunk)
        in_batch = ctypes.create_string_buffer(8)
        out_batch = ctypes.create_string_buffer(8)
        attr = ctypes.create_string_buffer(56)
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            struct.pack_into(
                "<QQQQIIQQ",
                attr,
                0,
                0 if first else ctypes.addressof(in_batch),
                ctypes.addressof(out_batch),
                ctypes.addressof(keys),
                ctypes.addressof(vals),
                chunk,
                map_fd,
                0,
                0,
            )
            done = False
            try:
                _bpf(_BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # a bucket larger than chunk: retry bigger
                    break
                if exc.errno != errno.ENOENT:
                    raise
                done = True
            n = struct.unpack_from("<I", attr, 32)[0]
            kraw, vraw = keys.raw, vals.raw
            out += [(kraw[i * ksz : (i + 1) * ksz], vraw[i * vsz : (i + 1) * vsz]) for i in range(n)]
            if done:
                return out
            ctypes.memmove(in_batch, out_batch, 8)
            first = False
        chunk *= 4


def _possible_cpus() -> int:
    """How many CPUs a per-CPU map has values for (the kernel's possible CPUs)."""
    global _POSSIBLE_CPUS
    if _POSSIBLE_CPUS == 0:
        with open("/sys/devices/system/cpu/possible") as f:
            n = 0
            for part in f.read().strip().split(","):
                lo, _, hi = part.partition("-")
                n = max(n, int(hi or lo) + 1)
        _POSSIBLE_CPUS = n
    return _POSSIBLE_CPUS


_POSSIBLE_CPUS = 0
