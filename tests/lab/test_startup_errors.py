"""Start-up problems of ``dnsotel trace``: one line on stderr saying what to do, exit 1, no traceback.

Each problem is produced for real (an unprivileged user, a Python that cannot import bcc,
an empty /lib/modules/$(uname -r) in a private mount namespace), never by patching dnsotel.

A refused ring buffer cannot be produced honestly through the CLI: no setting sizes the
ring, RLIMIT_MEMLOCK no longer applies (6.18 charges BPF memory to the memory cgroup),
and a memory-cgroup limit that lets the in-process clang compile succeed but fails the
2 MiB map is not reproducible. ``test_a_refused_ring_buffer_is_reported_as_such`` goes one
level down: ``EbpfCapture`` with a ring size the kernel rejects (EINVAL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require, require_root, require_tool
from tests.lab.lab import REPO_ROOT
from tests.lab.test_trace_live import dnsotel_argv

pytestmark = pytest.mark.lab

BLOCK_BCC = """\
import sys


class _NoBcc:
    def find_spec(self, name, path=None, target=None):
        if name == "bcc" or name.startswith("bcc."):
            raise ImportError("bcc blocked by the test")
        return None


sys.meta_path.insert(0, _NoBcc())
"""


def run_cli(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DNSOTEL_")}
    full.update(env or {})
    return subprocess.run(
        [*(prefix or []), *dnsotel_argv(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=full,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit ``code``, nothing on stdout, exactly one line on stderr containing every needle."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("dnsotel: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} missing from: {lines[0]}"
    assert proc.stdout == "", proc.stdout
    return lines[0]


def test_not_root() -> None:
    require_root()  # to switch to nobody
    require_tool("setpriv")
    proc = run_cli(
        "trace",
        "--netns",
        "/var/run/netns/none",
        prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    )
    one_line(proc, 1, "needs root", "CAP_BPF", "CAP_NET_RAW")


def test_bcc_not_installed() -> None:
    require_root()
    with tempfile.TemporaryDirectory(prefix="dnsotel-nobcc-") as d:
        Path(d, "sitecustomize.py").write_text(BLOCK_BCC)
        # the blocker really works: bcc is importable without it, not with it
        probe = [sys.executable, "-c", "import bcc"]
        assert subprocess.run(probe, capture_output=True, check=False).returncode == 0
        blocked = subprocess.run(probe, capture_output=True, env={**os.environ, "PYTHONPATH": d}, check=False)
        assert blocked.returncode != 0
        proc = run_cli("trace", env={"PYTHONPATH": d})
    one_line(proc, 1, "bcc is not installed", "apt-get install python3-bpfcc")


def test_kernel_headers_not_found() -> None:
    require_root()
    require_tool("unshare", "mount")
    rel = os.uname().release
    modules = Path("/lib/modules") / rel
    require(modules.is_dir(), f"needs {modules} (the headers this test hides)")
    require(
        not Path("/sys/kernel/kheaders.tar.xz").exists(), "kernel has CONFIG_IKHEADERS: cannot hide headers"
    )
    empty = tempfile.mkdtemp(prefix="dnsotel-nohdr-")
    try:
        # a private mount namespace: the bind mount is invisible to everything else and goes with it
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        prefix = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            empty,
            str(modules),
        ]
        proc = run_cli("trace", prefix=prefix)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    assert (modules / "build").exists() or (modules / "source").exists(), (
        "the host's headers must be untouched"
    )
    one_line(proc, 1, "kernel headers not found", rel, "linux-headers")


def test_invalid_setting_names_the_variable() -> None:
    proc = run_cli("trace", env={"DNSOTEL_TIMEOUT_MS": "abc"})
    one_line(proc, 1, "DNSOTEL_TIMEOUT_MS", "abc")


def test_unknown_filter_field_is_a_usage_error() -> None:
    proc = run_cli("trace", "--filter", "nosuchfield==1")
    one_line(proc, 2, "nosuchfield", "--list-fields")


def test_a_refused_ring_buffer_is_reported_as_such() -> None:
    require_root()
    code = (
        "from exporter.capture.ebpf import EbpfCapture, CaptureError\n"
        "try:\n"
        "    EbpfCapture(lambda s: None, ringbuf_pages=1 << 22)\n"  # 16 GiB: the kernel says EINVAL
        "except CaptureError as e:\n"
        "    print('dnsotel:', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False
    )
    assert "ring buffer" in proc.stdout or "BPF maps" in proc.stdout, proc.stdout + proc.stderr
    assert "compiling" not in proc.stdout
