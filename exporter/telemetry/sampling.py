"""Which exchanges become spans (DESIGN §4 "Export").

Every failed (rcode != NOERROR), unanswered and slow exchange is kept; of the rest a
share ``ratio`` is kept, decided from the derived trace id exactly like the SDK's
``TraceIdRatioBased`` sampler (the low 64 bits of the trace id below ``ratio * 2^64``),
so the client's and the server's span of one exchange, computed on different nodes,
make the same decision. Kept spans then pass a token bucket (``rate`` spans/s, a burst
of one second's worth); a span refused by it is dropped and counted by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

_LOW64 = (1 << 64) - 1


def ratio_bound(ratio: float) -> int:
    """The threshold the low 64 bits of a trace id must be under to be kept at ``ratio``."""
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:
        return 1 << 64
    return round(ratio * (1 << 64))


def keep_by_ratio(trace_id: int, bound: int) -> bool:
    return (trace_id & _LOW64) < bound


class TokenBucket:
    """A rate cap: ``take()`` is True at most ``rate`` times per second on average.

    ``rate <= 0`` means unlimited. ``clock`` returns monotonic nanoseconds. Called from
    one thread only (the capture thread), so it holds no lock.
    """

    __slots__ = ("_burst", "_clock", "_last", "_per_ns", "_tokens", "unlimited")

    def __init__(self, rate: float, clock: Callable[[], int], burst: float | None = None) -> None:
        self.unlimited = rate <= 0
        self._per_ns = rate / 1e9
        self._burst = max(1.0, rate if burst is None else burst)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        if self.unlimited:
            return True
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self._per_ns
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
