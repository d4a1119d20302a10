"""List+watch through the ``kubernetes`` client, in a daemon thread per resource.

One ``ListWatcher`` keeps one ``WatchSink`` (the ``PodIndex``) in step with one collection:

1. **list** in pages (``limit``/``continue``), raw JSON (no model objects: a 10,000-pod
   list deserialized into ``V1Pod`` models costs seconds and hundreds of MB), then
   ``sink.replace(kind, items)``; remember the list's ``metadata.resourceVersion``;
2. **watch** from that version with ``allowWatchBookmarks=true`` and a server-side
   ``timeoutSeconds``, through ``kubernetes.watch.Watch.stream`` with no return type, so
   events stay raw dicts (``deserialize=False`` is not used: kubernetes 37.0.2's ``stream``
   then fails with ``KeyError: 'raw_object'`` on an ``ERROR`` event instead of raising 410);
   ``ADDED``/``MODIFIED``/``DELETED`` go to ``sink.apply``; every event, and every
   ``BOOKMARK``, moves the resource version on, so the next watch resumes where this one stopped;
3. when the server ends the watch (timeout), watch again from the last version;
4. ``410 Gone`` (an ``ERROR`` event carrying a ``Status`` with code 410, or an HTTP 410 on
   a list continuation or a watch start) means our version is older than the server's
   history: list again (step 1). ``Watch.stream`` raises these as ``ApiException(status=410)``
   because we pass ``timeout_seconds`` (which also turns off its own single retry);
5. any other failure (connection refused or reset, a stream cut mid-chunk, a 5xx, a read
   timeout) is logged once per streak and retried with exponential backoff and jitter,
   resuming the watch from the last version;
6. when the API has been unreachable for ``stale_after`` seconds, ``sink.clear(kind)``:
   names degrade to raw ``r/ip:port`` rather than go on naming pods that may be gone
   (their IPs reused); the next success lists again and names return.

Nothing here blocks the capture side: lookups read the sink's dicts, and a dead API only
slows this thread down. ``stop()`` shuts the watch socket so the thread ends promptly.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# What the code calls on the API (the ClusterRole must allow exactly these, see deploy/).
REQUIRED_RBAC: dict[str, frozenset[str]] = {
    "pods": frozenset({"list", "watch"}),
    "services": frozenset({"list", "watch"}),
    "nodes": frozenset({"list", "watch"}),
}

HTTP_GONE = 410


class WatchSink(Protocol):
    def slim(self, kind: str, obj: Mapping[str, Any]) -> Any:
        """The part of a listed object to keep until ``replace`` (called per object, per page)."""
        ...

    def replace(self, kind: str, items: Iterable[Any]) -> None:
        """The whole collection after a (re)list: the ``slim`` results, in list order."""
        ...

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None: ...

    def clear(self, kind: str) -> None: ...


class Gone(Exception):
    """The resource version we hold is too old for the server (410): list again."""


@dataclass(slots=True)
class WatchStats:
    lists: int = 0  # successful (re)lists
    relists_gone: int = 0  # of which caused by 410 Gone
    watches: int = 0  # watch requests started
    events: int = 0  # ADDED/MODIFIED/DELETED applied
    bookmarks: int = 0
    errors: int = 0  # failed requests (connection, protocol, 5xx)
    degraded: int = 0  # times the index was cleared after stale_after seconds without the API


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status", None)
    return code if isinstance(code, int) else None


def _rv_of(obj: Any) -> str | None:
    if isinstance(obj, Mapping):
        meta = obj.get("metadata")
        if isinstance(meta, Mapping):
            rv = meta.get("resourceVersion")
            if rv:
                return str(rv)
    return None


class ListWatcher:
    """Keeps ``sink`` in step with one collection; see the module docstring for the protocol.

    ``list_fn`` is a ``kubernetes.client.CoreV1Api`` list method (``list_pod_for_all_namespaces``,
    ``list_service_for_all_namespaces``, ``list_node``). ``clock`` and ``rng`` are injectable
    for tests; waits use an ``Event`` so ``stop()`` interrupts them.
    """

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        sink: WatchSink,
        *,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stale_after_s: float = 60.0,
        min_healthy_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._sink = sink
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stale_after_s = stale_after_s
        self.min_healthy_s = min_healthy_s
        self._clock = clock
        self._rng = rng
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.resource_version: str | None = None
        self.stats = WatchStats()
        self.connected = False  # the last request succeeded
        self.last_error = ""
        self._failing_since: float | None = None
        self._failures = 0
        self._cleared = False

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> ListWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=f"dnsotel-k8s-{self.kind}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            try:
                w.stop()
            except Exception:
                log.debug("stopping the %s watch failed", self.kind, exc_info=True)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def step(self) -> None:
        """One list or one watch (until it ends), with the error handling around it."""
        started = self._clock()
        try:
            if self.resource_version is None:
                self._list()
            self._watch_once()
            self._succeeded()
        except Gone:
            self.stats.relists_gone += 1
            log.info(
                "kubernetes %s: resource version %s expired (410), listing again",
                self.kind,
                self.resource_version,
            )
            self.resource_version = None
            self._succeeded()  # the server answered
        except Exception as exc:
            if self._stop.is_set():
                return
            if self._clock() - started >= self.min_healthy_s:
                self._succeeded()  # a watch that ran a while and then broke: the API was up
            self._failed(exc)

    def _succeeded(self) -> None:
        self.connected = True
        self._failing_since = None
        self._failures = 0
        self._cleared = False

    def _failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.connected = False
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        self._failures += 1
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self._failures == 1 or text != self.last_error:
            log.warning(
                "kubernetes %s: %s; retrying with backoff (names may be raw meanwhile)", self.kind, text
            )
        self.last_error = text
        if not self._cleared and now - self._failing_since >= self.stale_after_s:
            log.warning(
                "kubernetes %s: API unreachable for %.0fs, dropping cached names until it is back",
                self.kind,
                now - self._failing_since,
            )
            self._sink.clear(self.kind)
            self._cleared = True
            self.resource_version = None  # what we held is gone: list again when the API returns
            self.stats.degraded += 1
        self._stop.wait(self.backoff_delay(self._failures))

    def backoff_delay(self, failures: int) -> float:
        """Exponential backoff with jitter: base * 2^(n-1), capped, times a factor in [0.5, 1.5)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(failures - 1, 30)))
        return float(min(self.backoff_max_s, base * (0.5 + self._rng())))

    # --- list ----------------------------------------------------------------------------

    def _call(self, **kwargs: Any) -> Any:
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        return self._list_fn(**kwargs)

    def _list(self) -> None:
        from kubernetes.client.exceptions import ApiException

        items: list[Any] = []  # slimmed page by page: a 10,000-pod list never sits in memory as JSON
        token: str | None = None
        rv: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": self.page_size,
                "_preload_content": False,
                "_request_timeout": (self.connect_timeout_s, self.request_timeout_s),
            }
            if token:
                kwargs["_continue"] = token
            try:
                resp = self._call(**kwargs)
            except ApiException as exc:
                if _status_code(exc) == HTTP_GONE:
                    raise Gone(str(exc)) from None  # continue token expired: start over
                raise
            try:
                status = getattr(resp, "status", 200)
                body = resp.data
            finally:
                _release(resp)
            if isinstance(status, int) and status == HTTP_GONE:
                raise Gone("list continuation expired")
            if isinstance(status, int) and not 200 <= status <= 299:
                raise ApiError(status, body)
            page = json.loads(body)
            slim = self._sink.slim
            items.extend(slim(self.kind, obj) for obj in page.get("items") or ())
            meta = page.get("metadata") or {}
            del page, body
            if rv is None:
                rv = str(meta.get("resourceVersion") or "") or None
            token = meta.get("continue") or None
            if not token or self._stop.is_set():
                break
        self._sink.replace(self.kind, items)
        self.resource_version = rv or "0"
        self.stats.lists += 1
        self._succeeded()
        log.debug("kubernetes %s: listed %d at resourceVersion %s", self.kind, len(items), rv)

    # --- watch ---------------------------------------------------------------------------

    def _watch_once(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        w = _raw_watch_class(watch.Watch)()
        self._watch = w
        self.stats.watches += 1
        kwargs: dict[str, Any] = {
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout_s,
            "_request_timeout": (self.connect_timeout_s, self.watch_timeout_s + self.request_timeout_s),
        }
        if self.field_selector:
            kwargs["field_selector"] = self.field_selector
        try:
            for event in w.stream(self._list_fn, **kwargs):
                if self._stop.is_set():
                    break
                self._on_event(event)
        except ApiException as exc:
            if _status_code(exc) == HTTP_GONE:
                raise Gone(str(exc)) from None
            raise
        finally:
            self._watch = None

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, Mapping):
            return
        etype = event.get("type")
        obj = event.get("object")
        if etype == "ERROR":  # Watch.stream raises these itself; kept for safety
            code = obj.get("code") if isinstance(obj, Mapping) else None
            if code == HTTP_GONE:
                raise Gone(str(obj.get("message", "")) if isinstance(obj, Mapping) else "")
            raise ApiError(code if isinstance(code, int) else 0, json.dumps(obj))
        rv = _rv_of(obj)
        if etype == "BOOKMARK":
            self.stats.bookmarks += 1
        elif etype in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, Mapping):
            self._sink.apply(self.kind, etype, obj)
            self.stats.events += 1
        if rv:
            self.resource_version = rv
        self._succeeded()


def _raw_watch_class(base: type[Any]) -> type[Any]:
    """``kubernetes.watch.Watch`` that leaves event objects as the JSON dicts they arrived as."""

    class RawWatch(base):  # type: ignore[misc]
        def get_return_type(self, func: Any) -> None:
            return None

    return RawWatch


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body)
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


def _release(resp: Any) -> None:
    for name in ("release_conn", "close"):
        fn = getattr(resp, name, None)
        if fn is not None:
            try:
                fn()
            except Exception:
                pass
