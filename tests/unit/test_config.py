"""Settings from DNSOTEL_* variables and flags: defaults, overrides, and one-line errors."""

from __future__ import annotations

import pytest

from exporter.cli import main, parse_duration_ns
from exporter.config import ConfigError, from_env, parse_ports


def test_defaults_are_the_documented_ones() -> None:
    s = from_env({})
    assert s.ports == frozenset({53})
    assert s.timeout_ns == 5_000_000_000
    assert s.max_pending == 65_536
    assert s.snaplen == 1232
    assert s.slow_ns == 100_000_000
    assert s.span_sample_ratio == 1.0
    assert s.span_rate_limit == 0.0
    assert s.prometheus_port is None and s.prometheus_addr == "127.0.0.1"
    assert s.otlp_configured is False
    assert s.kubernetes is False and s.cluster_names is False
    assert s.proc_root == "/proc"
    assert s.pairing == "kernel"  # `run` only: `trace` always pairs in user space


def test_variables_are_read() -> None:
    s = from_env(
        {
            "DNSOTEL_PORTS": "53, 5353",
            "DNSOTEL_TIMEOUT_MS": "1500",
            "DNSOTEL_SLOW_MS": "20",
            "DNSOTEL_SPAN_SAMPLE_RATIO": "0.25",
            "DNSOTEL_PROMETHEUS_PORT": "9999",
            "DNSOTEL_HOST_NETNS": "yes",
            "DNSOTEL_NETNS": "/var/run/netns/a,/proc/1/ns/net",
            "DNSOTEL_NODE_NAME": "node-7",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        }
    )
    assert s.ports == frozenset({53, 5353})
    assert s.timeout_ns == 1_500_000_000
    assert s.slow_ns == 20_000_000
    assert s.span_sample_ratio == 0.25
    assert s.prometheus_port == 9999
    assert s.include_host is True
    assert s.netns_paths == ("/var/run/netns/a", "/proc/1/ns/net")
    assert s.node_name == "node-7"
    assert s.otlp_configured is True


def test_flags_override_variables() -> None:
    s = from_env({"DNSOTEL_TIMEOUT_MS": "1500"}, timeout_ns=42, ports=None)
    assert s.timeout_ns == 42
    assert s.ports == frozenset({53})  # None means "flag not given"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DNSOTEL_TIMEOUT_MS", "abc"),
        ("DNSOTEL_TIMEOUT_MS", "0"),
        ("DNSOTEL_SPAN_SAMPLE_RATIO", "2"),
        ("DNSOTEL_SPAN_SAMPLE_RATIO", "nan"),
        ("DNSOTEL_HOST_NETNS", "maybe"),
        ("DNSOTEL_PROMETHEUS_PORT", "70000"),
        ("DNSOTEL_SNAPLEN", "8192"),
        ("DNSOTEL_PORTS", "53,x"),
        ("DNSOTEL_PORTS", "1,2,3,4,5,6,7,8,9"),
        ("DNSOTEL_LOG_LEVEL", "chatty"),
    ],
)
def test_an_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_env({name: value})
    message = str(err.value)
    assert name in message and "\n" not in message


def test_ports_flag_limits() -> None:
    assert parse_ports("53,5353") == frozenset({53, 5353})
    with pytest.raises(ConfigError, match="at most 8"):
        parse_ports(",".join(str(p) for p in range(1, 10)))
    with pytest.raises(ConfigError, match="not a port number"):
        parse_ports("0")


@pytest.mark.parametrize(
    ("text", "ns"),
    [("5s", 5_000_000_000), ("500ms", 500_000_000), ("250", 250_000_000), ("1.5s", 1_500_000_000)],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


def test_the_cli_turns_a_bad_variable_into_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DNSOTEL_TIMEOUT_MS", "soon")
    assert main(["trace", "--pcap", "tests/fixtures/sll2.pcap"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DNSOTEL_TIMEOUT_MS" in err[0]
