"""Network namespace discovery and the attach/detach watcher, on a fake /proc tree."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from exporter.netns import NetnsWatcher, discover, netns_inode, resolve

HOST = 4026531993


def add_proc(root: Path, pid: int | str, inode: int | None) -> None:
    ns = root / str(pid) / "ns"
    ns.mkdir(parents=True)
    if inode is not None:
        (ns / "net").symlink_to(f"net:[{inode}]")  # dangling, exactly like the real link's text


def add_named(run: Path, name: str, inode: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / name).symlink_to(f"net:[{inode}]")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    proc, run = tmp_path / "proc", tmp_path / "netns"
    add_proc(proc, 1, HOST)
    add_proc(proc, 50, HOST)
    add_proc(proc, 100, 4026532100)
    add_proc(proc, 101, 4026532100)  # two processes, one namespace
    add_proc(proc, 200, 4026532200)
    add_proc(proc, 300, None)  # exited between listdir and readlink
    (proc / "self").mkdir()
    (proc / "sys").mkdir()
    add_named(run, "lab1", 4026532300)
    add_named(run, "pod", 4026532200)  # also held by pid 200: the named path wins
    return proc, run


def test_discover_maps_each_namespace_once_and_skips_the_host(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    found = discover(str(proc), str(run))
    assert found == {
        4026532100: str(proc / "100" / "ns" / "net"),
        4026532200: str(run / "pod"),
        4026532300: str(run / "lab1"),
    }


def test_discover_includes_the_host_when_asked(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    found = discover(str(proc), str(run), include_host=True)
    assert found[HOST] == str(proc / "1" / "ns" / "net")
    assert len(found) == 4


def test_discover_tolerates_vanishing_and_forbidden_processes(tree: tuple[Path, Path]) -> None:
    proc, run = tree

    def flaky(path: str) -> int:
        if "/100/" in path or "/101/" in path:
            raise PermissionError(errno.EACCES, "denied", path)
        if "/200/" in path:
            raise ProcessLookupError(errno.ESRCH, "gone", path)
        return netns_inode(path)

    found = discover(str(proc), str(run), read_inode=flaky)
    assert set(found) == {4026532200, 4026532300}


def test_host_falls_back_to_own_netns_when_pid1_is_unreadable(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    (proc / "self").rmdir()
    add_proc(proc, "self", 4026532100)  # we run inside 4026532100; PID 1 is hidden from us

    def no_pid1(path: str) -> int:
        if "/1/" in path:
            raise PermissionError(errno.EACCES, "denied", path)
        return netns_inode(path)

    found = discover(str(proc), str(run), read_inode=no_pid1)
    assert set(found) == {HOST, 4026532200, 4026532300}  # pid 50 still shows the real host's


def test_discover_without_run_netns_or_proc(tmp_path: Path) -> None:
    assert discover(str(tmp_path / "noproc"), str(tmp_path / "norun")) == {}


def test_netns_inode_reads_link_text_and_stats_bind_mounts(tmp_path: Path) -> None:
    link = tmp_path / "net"
    link.symlink_to("net:[4026532999]")
    assert netns_inode(str(link)) == 4026532999
    plain = tmp_path / "mounted"
    plain.write_bytes(b"")
    assert netns_inode(str(plain)) == os.stat(plain).st_ino
    with pytest.raises(FileNotFoundError):
        netns_inode(str(tmp_path / "missing"))


def test_netns_inode_of_this_process_matches_stat() -> None:
    assert netns_inode("/proc/self/ns/net") == os.stat("/proc/self/ns/net").st_ino


def test_resolve_only_listed_paths(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    got = resolve([str(run / "lab1"), str(proc / "1" / "ns" / "net"), str(run / "missing")])
    assert got == {4026532300: str(run / "lab1"), HOST: str(proc / "1" / "ns" / "net")}


class Recorder:
    def __init__(self) -> None:
        self.attached: dict[int, str] = {}
        self.calls: list[tuple[str, int]] = []
        self.fail: set[int] = set()

    def attach(self, path: str, ino: int) -> None:
        self.calls.append(("attach", ino))
        if ino in self.fail:
            raise OSError(errno.ENOENT, "namespace vanished", path)
        self.attached[ino] = path

    def detach(self, ino: int) -> None:
        self.calls.append(("detach", ino))
        del self.attached[ino]


def test_watcher_attaches_new_and_detaches_vanished(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    rec = Recorder()
    w = NetnsWatcher(rec.attach, rec.detach, proc_root=str(proc), run_netns=str(run))
    assert w.scan() == 3
    assert set(rec.attached) == {4026532100, 4026532200, 4026532300}

    # pid 100 exits but 101 is still in that namespace: nothing changes
    for p in (proc / "100" / "ns" / "net", proc / "100" / "ns", proc / "100"):
        p.unlink() if p.is_symlink() else p.rmdir()
    assert w.scan() == 3
    assert rec.calls.count(("attach", 4026532100)) == 1

    # a namespace is deleted, another appears
    (run / "lab1").unlink()
    add_proc(proc, 400, 4026532400)
    assert w.scan() == 3
    assert set(rec.attached) == {4026532100, 4026532200, 4026532400}
    assert ("detach", 4026532300) in rec.calls
    assert w.attached == rec.attached


def test_watcher_retries_a_failed_attach_and_never_raises(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    rec = Recorder()
    rec.fail.add(4026532300)
    w = NetnsWatcher(rec.attach, rec.detach, proc_root=str(proc), run_netns=str(run))
    assert w.scan() == 2
    assert w.attach_failures == 1
    assert w.scan() == 2
    assert w.attach_failures == 2
    rec.fail.clear()
    assert w.scan() == 3
    assert 4026532300 in rec.attached


def test_watcher_survives_a_failing_detach(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    rec = Recorder()

    def bad_detach(ino: int) -> None:
        raise RuntimeError("socket already closed")

    w = NetnsWatcher(rec.attach, bad_detach, proc_root=str(proc), run_netns=str(run))
    w.scan()
    (run / "lab1").unlink()
    assert w.scan() == 2
    assert 4026532300 not in w.attached


def test_watcher_only_limits_to_given_namespaces(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    rec = Recorder()
    only = [str(run / "lab1"), str(proc / "200" / "ns" / "net")]
    w = NetnsWatcher(rec.attach, rec.detach, proc_root=str(proc), run_netns=str(run), only=only)
    assert w.scan() == 2
    assert rec.attached == {4026532300: only[0], 4026532200: only[1]}


def test_watcher_tick_rescans_after_the_interval(tree: tuple[Path, Path]) -> None:
    proc, run = tree
    rec = Recorder()
    now = [100.0]
    w = NetnsWatcher(
        rec.attach, rec.detach, interval=1.0, proc_root=str(proc), run_netns=str(run), clock=lambda: now[0]
    )
    assert w.tick() == 3
    add_proc(proc, 500, 4026532500)
    now[0] += 0.5
    assert w.tick() == 3  # too early
    now[0] += 0.6
    assert w.tick() == 4
