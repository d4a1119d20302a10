"""Shared test configuration.

Lab tests need root, network namespaces, Debian's DNS servers and the eBPF program.
Where one of those is missing a lab test skips on a developer's laptop, but in CI
(``CI=true``) it fails: a skipped lab test must never hide a gap.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a lab prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"lab prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, eBPF)")


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None or os.path.exists(name), f"needs {name} (see README set-up)")
