"""Reconnect waits: exponential with full jitter, and bounded."""

from __future__ import annotations

from natter import Natter


def test_reconnect_waits_grow_exponentially_with_full_jitter_and_stay_bounded() -> None:
    natter = Natter("http://127.0.0.1:9", token="t", backoff_base=0.25, backoff_max=10.0)
    for attempt in range(40):
        ceiling = min(10.0, 0.25 * 2**attempt)
        waits = [natter._backoff(attempt) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits), attempt
        # Full jitter: spread over the whole range, not clustered near the ceiling.
        assert min(waits) < ceiling * 0.2 and max(waits) > ceiling * 0.8, attempt
