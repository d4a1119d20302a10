#!/usr/bin/env bash
# Install what dnsotel needs on Debian 12, only what is missing. Quick when nothing is.
#   scripts/setup.sh deb    Debian packages + kernel header links for bcc
#   scripts/setup.sh venv   .venv (from /usr/bin/python3, with system site-packages for bcc)
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(python3-bpfcc linux-headers-amd64 python3-venv python3-dev dnsmasq-base unbound
              dnsperf tshark tcpdump prometheus iproute2 procps)

need_root() { [ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get and kernel header links need it)" >&2; exit 1; }; }

deb() {
    local missing=()
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        need_root
        echo "setup: installing Debian packages: ${missing[*]}"
        # Packages like unbound and prometheus start a system service when installed; we run
        # our own instances inside test namespaces, so keep the host's services stopped.
        local had_policy=0
        [ -e /usr/sbin/policy-rc.d ] && had_policy=1
        if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        if [ $had_policy = 0 ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
    kernel_headers
}

# bcc compiles the BPF program against /lib/modules/$(uname -r)/{build,source}. A socket
# filter uses no kernel-internal struct, so Debian's generic header set works for any
# running kernel; point the links at it when the running kernel has none of its own.
kernel_headers() {
    local mod="/lib/modules/$(uname -r)"
    if [ -e "$mod/build/include" ] && [ -e "$mod/source" ]; then return 0; fi
    local build common
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$build" ] || [ -z "$common" ]; then
        echo "setup: no kernel headers under /usr/src; install linux-headers-amd64" >&2; exit 1
    fi
    need_root
    mkdir -p "$mod"
    ln -sfn "$build" "$mod/build"
    ln -sfn "$common" "$mod/source"
    echo "setup: linked $mod/build -> $build and source -> $common"
}

venv() {
    local stamp=.venv/.dnsotel-installed
    if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then return 0; fi
    [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
    echo "setup: installing dnsotel and its test extras into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
}

for step in "$@"; do "$step"; done
