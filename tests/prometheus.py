"""Debian's ``/usr/bin/prometheus`` for the tests, and reading ``/metrics`` text.

:class:`Prometheus` runs the real binary on 127.0.0.1:<free port> with a temporary data
directory, scraping the given targets every second (job ``dnsotel``), and answers PromQL
through its HTTP API. Used as a context manager it is stopped (by PID) on the way out.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool

PROMETHEUS = "/usr/bin/prometheus"

Result = list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` text as {(sample name, sorted labels): value} (prometheus-client's parser)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


class Prometheus:
    """``/usr/bin/prometheus`` on 127.0.0.1:<free port>, scraping ``targets`` every second.

    ``labels`` are added to every scraped series; ``rule_files`` are evaluated every
    ``evaluation_interval``.
    """

    def __init__(
        self,
        tmp: Path,
        targets: Sequence[str],
        *,
        labels: dict[str, str] | None = None,
        rule_files: Sequence[Path] = (),
        job: str = "dnsotel",
    ) -> None:
        require_tool(PROMETHEUS)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        self.config = tmp / "prometheus.yml"
        static: dict[str, Any] = {"targets": list(targets)}
        if labels:
            static["labels"] = labels
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [static]}],
        }
        if rule_files:
            config["rule_files"] = [str(p) for p in rule_files]
        self.config.write_text(yaml.safe_dump(config))
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        return self

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()  # by PID
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def assert_alive(self) -> None:
        assert self.popen is not None and self.popen.poll() is None, self.log.read_text()[-2000:]

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``, the JSON body; OSError while Prometheus does not answer."""
        self.assert_alive()
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        return json.loads(fetch(url, timeout=10))

    def query(self, expr: str) -> Result:
        """An instant query's result (OSError while Prometheus does not answer)."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", body
        result: Result = body["data"]["result"]
        return result

    def poll(self, expr: str) -> Result | None:
        """:meth:`query`, or None while Prometheus does not answer yet."""
        try:
            return self.query(expr)
        except OSError:
            return None

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one series (None while it yields nothing)."""
        result = self.poll(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[Result], bool] = bool,
        timeout: float = 60,
        interval: float = 0.5,
    ) -> Result:
        """Query ``expr`` until its result satisfies ``predicate`` (by default: not empty)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.poll(expr)
            if result is not None and predicate(result):
                return result
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s waiting for {expr}: {result}\n{self.log.read_text()[-2000:]}"
            )
            time.sleep(interval)
