"""RetryPolicy: which errors retry, how long to wait, and when to give up."""

import random

import grpc
import pytest

from client import RetryPolicy, TandemError


def _error(code=grpc.StatusCode.UNAVAILABLE, retry_after=None) -> TandemError:
    return TandemError(code, "x", retry_after)


def test_only_unavailable_and_resource_exhausted_retry():
    policy = RetryPolicy(rng=random.Random(0))
    assert policy.wait(_error(grpc.StatusCode.UNAVAILABLE), 1, None) is not None
    assert policy.wait(_error(grpc.StatusCode.RESOURCE_EXHAUSTED), 1, None) is not None
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED):
        assert policy.wait(_error(code), 1, None) is None


def test_backoff_grows_exponentially_within_jitter_and_caps():
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, multiplier=2.0, max_backoff=0.5,
                         jitter=0.2, rng=random.Random(1))
    for attempts, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (8, 0.5)]:
        wait = policy.wait(_error(), attempts, None)
        assert base * 0.8 <= wait <= base


def test_retry_after_is_a_floor():
    policy = RetryPolicy(jitter=0.2, rng=random.Random(2))
    waits = [policy.wait(_error(retry_after=1.5), 1, None) for _ in range(50)]
    assert all(1.5 <= w <= 1.8 for w in waits) and len(set(waits)) > 1


def test_attempts_are_bounded_and_the_deadline_is_respected():
    policy = RetryPolicy(max_attempts=3)
    assert policy.wait(_error(), 2, None) is not None
    assert policy.wait(_error(), 3, None) is None
    assert policy.wait(_error(retry_after=2.0), 1, remaining=1.0) is None


def test_bad_policy_is_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
