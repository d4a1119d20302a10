"""Fixtures for lab tests: a running lab with the scriptable upstream, and real resolvers.

``lab`` is module-scoped (one topology per test module; a test that breaks the lab should
build its own with ``Lab()``); ``dnsmasq`` / ``unbound`` are started on demand in it, with
caching off so every query reaches the upstream. ``resolver`` is parametrized over both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require, require_root, require_tool
from tests.lab.lab import Dnsmasq, Lab, Resolver, Unbound


def require_lab() -> None:
    """Root, iproute2, and the DNS servers/capture tools the lab uses."""
    require_root()
    require_tool("ip", "ss", "/usr/sbin/dnsmasq", "/usr/sbin/unbound")
    try:
        import dns.message  # noqa: F401
    except ImportError:
        require(False, "needs dnspython (pip install -e .[test])")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab() as the_lab:
        the_lab.start_upstream()
        yield the_lab


@pytest.fixture(scope="module")
def dnsmasq(lab: Lab) -> Iterator[Dnsmasq]:
    res = Dnsmasq(lab, cache=False).start()
    yield res
    res.stop()


@pytest.fixture(scope="module")
def unbound(lab: Lab) -> Iterator[Unbound]:
    res = Unbound(lab, cache=False).start()
    yield res
    res.stop()


@pytest.fixture(params=["dnsmasq", "unbound"])
def resolver(request: pytest.FixtureRequest) -> Resolver:
    """Each real resolver in turn; both run side by side (dnsmasq on ``.1``, unbound on ``.3``)."""
    res: Resolver = request.getfixturevalue(request.param)
    return res
