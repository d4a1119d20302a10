"""A fake Kubernetes API server for pods, services and nodes: a real HTTP server on loopback,
speaking the list/watch protocol the real ``kubernetes`` client expects.

* ``GET /api/v1/{pods,services,nodes}`` and ``/api/v1/namespaces/NS/{pods,services}``:
  a JSON ``PodList``/... with ``metadata.resourceVersion``; ``limit``/``continue`` paging
  (an expired continue token is HTTP 410 with a ``Status``); ``fieldSelector`` on
  ``spec.nodeName``, ``metadata.name`` and ``metadata.namespace``; ``labelSelector`` ``k=v``.
* ``...?watch=true&resourceVersion=N``: a chunked stream of ``{"type": ..., "object": ...}``
  lines — the history after N, then live events; ``BOOKMARK`` events when
  ``allowWatchBookmarks=true`` (``bookmark()`` or every ``bookmark_interval`` s); an ``ERROR``
  event with a 410 ``Status`` when N is older than the kept history (``compact()``);
  the stream ends after ``timeoutSeconds``.
* test controls: ``add/modify/delete``, ``compact()``, ``disconnect_watches()`` (abrupt
  socket shutdown mid-stream), ``stop()``/``start()`` on the same port (API down / back),
  ``requests`` (a log of ``(method, path, query)``).

Used by tests/unit/test_k8s_*.py and tests/lab/test_k8s_lab.py::

    with FakeApiServer() as api:
        api.add("pods", pod("default", "web", ip="198.18.1.2", node="n1"))
        core = api.client()          # kubernetes.client.CoreV1Api pointed at it
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KIND_NAMES = {"pods": "Pod", "services": "Service", "nodes": "Node"}
NAMESPACED = {"pods": True, "services": True, "nodes": False}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def pod(
    namespace: str,
    name: str,
    *,
    ip: str | list[str] | None = None,
    node: str = "node-1",
    uid: str | None = None,
    containers: dict[str, str] | None = None,  # name -> container ID (without runtime prefix)
    labels: dict[str, str] | None = None,
    host_network: bool = False,
    phase: str = "Running",
    runtime: str = "containerd",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod as the API serves it (the fields dnsotel reads, and a few it does not)."""
    ips = [ip] if isinstance(ip, str) else list(ip or [])
    containers = containers if containers is not None else {name: uuid.uuid4().hex * 2}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [{"name": c, "image": f"example/{c}:1"} for c in containers],
        },
        "status": {
            "phase": phase,
            "podIP": ips[0] if ips else None,
            "podIPs": [{"ip": i} for i in ips],
            "containerStatuses": [
                {
                    "name": c,
                    "containerID": f"{runtime}://{cid}",
                    "ready": True,
                    "restartCount": 0,
                    "image": f"example/{c}:1",
                    "imageID": f"example/{c}@sha256:{'0' * 64}",
                }
                for c, cid in containers.items()
            ],
        },
    }


def service(namespace: str, name: str, ips: str | list[str], port: int = 53) -> dict[str, Any]:
    cips = [ips] if isinstance(ips, str) else list(ips)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"clusterIP": cips[0], "clusterIPs": cips, "ports": [{"port": port, "protocol": "UDP"}]},
    }


def node(name: str, ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": str(uuid.uuid4())},
        "status": {"addresses": [{"type": "InternalIP", "address": i} for i in ips]},
    }


def _key(kind: str, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}" if NAMESPACED[kind] else meta["name"]


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def _selected(obj: dict[str, Any], field_sel: str, label_sel: str, namespace: str | None) -> bool:
    if namespace is not None and obj["metadata"].get("namespace") != namespace:
        return False
    for term in filter(None, field_sel.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if _field(obj, k) == v:
                return False
        else:
            k, v = term.replace("==", "=").split("=", 1)
            if _field(obj, k) != v:
                return False
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, label_sel.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.fake._handle(self)


class FakeApiServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self._lock = threading.Condition()
        self._rv = 100
        self._objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KIND_NAMES}
        self._history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, kind, type, obj
        self._floor = 0  # watches from an rv below this get 410
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._watch_socks: set[socket.socket] = set()
        self._bookmarks_due: set[int] = set()
        self._generation = 0  # bumped by disconnect_watches / stop
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.paused = False  # when True, requests hang until unpaused (a stuck API)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        srv = _Server((self.host, self.port), _Handler)
        srv.fake = self
        self.port = srv.server_address[1]
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API goes away: stop listening and cut every open watch."""
        srv = self._server
        self._server = None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        self.disconnect_watches()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> Any:
        """A real ``kubernetes.client.CoreV1Api`` configured for this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.retries = False  # fail fast; ListWatcher does its own backoff
        return client.CoreV1Api(client.ApiClient(cfg))

    def write_kubeconfig(self, path: str) -> str:
        import yaml

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return path

    # --- state changes -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def _event(self, kind: str, etype: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            key = _key(kind, obj)
            if etype == "DELETED":
                self._objects[kind].pop(key, None)
            else:
                self._objects[kind][key] = obj
            self._history.append((self._rv, kind, etype, obj))
            self._lock.notify_all()
            return obj

    def add(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._event(kind, "ADDED", obj)

    def modify(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._event(kind, "MODIFIED", obj)

    def delete(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._event(kind, "DELETED", obj)

    def bulk_load(self, kind: str, objs: list[dict[str, Any]]) -> None:
        """Many objects at once, without history (as if they predate every watch)."""
        with self._lock:
            for obj in objs:
                self._rv += 1
                o = copy.deepcopy(obj)
                o["metadata"]["resourceVersion"] = str(self._rv)
                self._objects[kind][_key(kind, o)] = o
            self._floor = self._rv
            self._history = [h for h in self._history if h[0] > self._floor]

    def compact(self) -> None:
        """Forget the history: any watch resuming from an older version gets 410 Gone."""
        with self._lock:
            self._rv += 1
            self._floor = self._rv
            self._history = []

    def bookmark(self) -> None:
        """Send a BOOKMARK on every open watch that asked for bookmarks."""
        with self._lock:
            self._rv += 1
            self._floor = max(self._floor, 0)
            self._bookmarks_due = {id(s) for s in self._watch_socks}
            self._lock.notify_all()

    def disconnect_watches(self) -> None:
        """Cut every open watch stream mid-chunk (a load balancer or apiserver restart)."""
        with self._lock:
            socks = list(self._watch_socks)
            self._watch_socks.clear()
            self._generation += 1
            self._lock.notify_all()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watch_socks)

    def count(self, kind: str, *, watch: bool | None = None) -> int:
        n = 0
        for _, path, q in list(self.requests):
            if not path.endswith("/" + kind):
                continue
            is_watch = q.get("watch") in ("true", "1")
            if watch is None or watch == is_watch:
                n += 1
        return n

    # --- HTTP ----------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append(("GET", parts.path, q))
        while self.paused:
            time.sleep(0.02)
        segs = [s for s in parts.path.split("/") if s]
        namespace: str | None = None
        if len(segs) == 3 and segs[:2] == ["api", "v1"]:
            kind = segs[2]
        elif len(segs) == 5 and segs[:3] == ["api", "v1", "namespaces"]:
            namespace, kind = segs[3], segs[4]
        else:
            self._send_json(h, 404, status(404, "NotFound", f"{parts.path} not found"))
            return
        if kind not in KIND_NAMES or (namespace is not None and not NAMESPACED[kind]):
            self._send_json(h, 404, status(404, "NotFound", f"the server could not find {kind}"))
            return
        fsel, lsel = q.get("fieldSelector", ""), q.get("labelSelector", "")
        if q.get("watch") in ("true", "1"):
            self._watch(h, kind, namespace, fsel, lsel, q)
        else:
            self._list(h, kind, namespace, fsel, lsel, q)

    def _send_json(self, h: _Handler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _list(
        self, h: _Handler, kind: str, namespace: str | None, fsel: str, lsel: str, q: dict[str, str]
    ) -> None:
        with self._lock:
            rv = self._rv
            items = [o for _, o in sorted(self._objects[kind].items()) if _selected(o, fsel, lsel, namespace)]
        start = 0
        token = q.get("continue")
        if token:
            try:
                tok_rv, tok_start = (int(x) for x in token.split(":"))
            except ValueError:
                self._send_json(h, 400, status(400, "BadRequest", "bad continue token"))
                return
            if tok_rv < self._floor:
                self._send_json(h, 410, status(410, "Expired", "The provided continue parameter is too old"))
                return
            rv, start = tok_rv, tok_start
        limit = int(q.get("limit", "0") or 0)
        page = items[start : start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta["continue"] = f"{rv}:{start + limit}"
            meta["remainingItemCount"] = len(items) - start - limit
        body = {"kind": KIND_NAMES[kind] + "List", "apiVersion": "v1", "metadata": meta, "items": page}
        self._send_json(h, 200, body)

    def _watch(
        self, h: _Handler, kind: str, namespace: str | None, fsel: str, lsel: str, q: dict[str, str]
    ) -> None:
        try:
            since = int(q.get("resourceVersion", "0") or 0)
        except ValueError:
            self._send_json(h, 400, status(400, "BadRequest", "bad resourceVersion"))
            return
        timeout = float(q.get("timeoutSeconds", "1800") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sock = h.connection

        def chunk(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        with self._lock:
            self._watch_socks.add(sock)
            generation = self._generation
        deadline = time.monotonic() + timeout
        last_bookmark = time.monotonic()
        pos = since
        try:
            if since and since < self._floor:
                chunk(
                    {"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since}")}
                )
                h.wfile.write(b"0\r\n\r\n")
                return
            if since == 0:
                pos = self._rv  # "0"/absent: start from now (no synthetic ADDED in this fake)
            while True:
                with self._lock:
                    if generation != self._generation or sock not in self._watch_socks:
                        h.close_connection = True
                        return
                    pending = [e for e in self._history if e[0] > pos and e[1] == kind]
                    send_bookmark = bookmarks and id(sock) in self._bookmarks_due
                    if send_bookmark:
                        self._bookmarks_due.discard(id(sock))
                    if not pending and not send_bookmark:
                        self._lock.wait(0.05)
                        pending = [e for e in self._history if e[0] > pos and e[1] == kind]
                    current = self._rv
                for rv, _, etype, obj in pending:
                    pos = rv
                    if _selected(obj, fsel, lsel, namespace):
                        chunk({"type": etype, "object": obj})
                now = time.monotonic()
                periodic = (
                    bookmarks and self.bookmark_interval and now - last_bookmark >= self.bookmark_interval
                )
                if send_bookmark or periodic:
                    last_bookmark = now
                    pos = max(pos, current)
                    chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": KIND_NAMES[kind],
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(pos)},
                            },
                        }
                    )
                if now >= deadline:
                    h.wfile.write(b"0\r\n\r\n")
                    h.wfile.flush()
                    return
        except OSError:
            h.close_connection = True
        finally:
            with self._lock:
                self._watch_socks.discard(sock)


@contextlib.contextmanager
def running(**kw: Any) -> Iterator[FakeApiServer]:
    srv = FakeApiServer(**kw).start()
    try:
        yield srv
    finally:
        srv.stop()
