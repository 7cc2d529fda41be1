"""Retry policy: which statuses are retried, the jittered backoff and Retry-After parsing."""

from __future__ import annotations

import email.utils
import itertools
import random
import time

import pytest

from pipeline.retry import RetryPolicy, compute_backoff, is_retryable_status, parse_retry_after

POLICY = RetryPolicy(attempts=6, wait_initial=0.5, wait_max=30.0, wait_exp_base=2.0)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (413, False),
        (422, False),
        (200, False),
        (301, False),
        (600, False),
    ],
)
def test_is_retryable_status(status: int, retryable: bool) -> None:
    """408, 429 and 5xx are retryable; other statuses are final."""
    assert is_retryable_status(status) is retryable


class TestComputeBackoff:
    @pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8, 12])
    def test_within_full_jitter_window(self, attempt: int) -> None:
        """Every wait lies in [0, min(wait_max, initial * base ** (attempt - 1))]."""
        ceiling = min(POLICY.wait_max, POLICY.wait_initial * POLICY.wait_exp_base ** (attempt - 1))
        waits = [compute_backoff(POLICY, attempt, rand=random.Random(seed)) for seed in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # Full jitter uses the whole window, not a fixed fraction of it.
        assert max(waits) > 0.9 * ceiling
        assert min(waits) < 0.1 * ceiling

    def test_same_seed_same_wait(self) -> None:
        """A seeded Random makes the wait reproducible."""
        first = compute_backoff(POLICY, 3, rand=random.Random(42))
        second = compute_backoff(POLICY, 3, rand=random.Random(42))
        assert first == second

    def test_grows_with_attempt_until_cap(self) -> None:
        """With the same random draw, the wait doubles per attempt until wait_max."""
        waits = [compute_backoff(POLICY, n, rand=random.Random(7)) for n in range(1, 9)]
        draw = random.Random(7).random()
        expected = [min(30.0, 0.5 * 2 ** (n - 1)) * draw for n in range(1, 9)]
        assert waits == pytest.approx(expected)
        assert all(a < b for a, b in itertools.pairwise(waits[:7]))
        assert waits[6] == waits[7]  # attempts 7 and 8 both hit the 30 s cap

    @pytest.mark.parametrize("attempt", [7, 8, 10, 20, 60])
    def test_capped_at_wait_max(self, attempt: int) -> None:
        """Late attempts never wait more than wait_max."""
        waits = [compute_backoff(POLICY, attempt, rand=random.Random(s)) for s in range(100)]
        assert max(waits) <= POLICY.wait_max
        assert max(waits) > 0.9 * POLICY.wait_max

    def test_very_late_attempt_is_capped_not_overflowing(self) -> None:
        """An attempt number past float range still gives a wait <= wait_max."""
        assert compute_backoff(POLICY, 1100, rand=random.Random(0)) <= POLICY.wait_max

    @pytest.mark.parametrize(
        ("retry_after", "expected"),
        [
            (2.0, 2.0),
            (0.0, 0.0),
            (45.5, 45.5),
            (60.0, 60.0),
            (61.0, 60.0),
            (3600.0, 60.0),
            (float("inf"), 60.0),
        ],
    )
    def test_retry_after_honoured_and_capped(self, retry_after: float, expected: float) -> None:
        """A server's Retry-After replaces the jitter, capped at retry_after_max."""
        wait = compute_backoff(POLICY, 1, retry_after=retry_after, rand=random.Random(0))
        assert wait == expected

    def test_retry_after_wins_over_a_longer_backoff(self) -> None:
        """Retry-After is used even when the backoff window would be longer."""
        assert compute_backoff(POLICY, 10, retry_after=1.0, rand=random.Random(0)) == 1.0

    def test_retry_after_cap_comes_from_policy(self) -> None:
        """The Retry-After cap is the policy's retry_after_max."""
        policy = RetryPolicy(retry_after_max=5.0)
        assert compute_backoff(policy, 1, retry_after=9.0) == 5.0

    def test_negative_retry_after_falls_back_to_jitter(self) -> None:
        """A negative Retry-After is ignored and the jitter window applies."""
        wait = compute_backoff(POLICY, 1, retry_after=-5.0, rand=random.Random(3))
        assert wait == pytest.approx(0.5 * random.Random(3).random())


NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("  4 ", 4.0),
        ("120", 120.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:05 GMT", 5.0),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past -> no wait
        ("soon", None),
        ("garbage, 99 Foo", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Delta-seconds and HTTP dates parse to seconds; garbage and absence give None."""
    assert parse_retry_after(header, now=NOW) == expected


def test_parse_retry_after_date_uses_clock_by_default() -> None:
    """Without ``now``, an HTTP date is measured against the current time."""
    header = email.utils.formatdate(time.time() + 100, usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None
    assert 95.0 <= seconds <= 100.0
