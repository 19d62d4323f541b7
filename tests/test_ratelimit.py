"""Token buckets and the verification limiter: pure values, bounded admission."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrebootcert.ratelimit import Limiter, LimitResult, SourceLimiter, TokenBucket

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S
EPS = 1e-6  # float rounding allowance in the admission bounds


def takes(bucket: TokenBucket, now_ns: int, count: int) -> tuple[int, TokenBucket]:
    ok_count = 0
    for _ in range(count):
        ok, bucket = bucket.take(now_ns)
        ok_count += ok
    return ok_count, bucket


# ---- TokenBucket ----------------------------------------------------------------------


def test_full_bucket_admits_burst_then_refuses() -> None:
    bucket = TokenBucket.full(rate_per_s=1.0, burst=3, now_ns=T0)
    admitted, bucket = takes(bucket, T0, 10)
    assert admitted == 3
    assert bucket.tokens == 0.0 and bucket.last_ns == T0


def test_refills_at_rate_and_caps_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=5, tokens=0.0, last_ns=T0)
    assert bucket.take(T0 + S // 4)[0] is False  # 0.5 token
    ok, after = bucket.take(T0 + S // 2)  # exactly 1 token
    assert ok and after.tokens == pytest.approx(0.0)
    assert takes(bucket, T0 + 1 * S, 10)[0] == 2
    assert takes(bucket, T0 + 3600 * S, 10)[0] == 5  # capped at burst
    assert bucket.refilled(T0 + 3600 * S).tokens == 5.0


def test_take_n_and_more_than_burst() -> None:
    bucket = TokenBucket.full(1.0, 4, T0)
    ok, after = bucket.take(T0, n=3)
    assert ok and after.tokens == 1.0
    assert after.take(T0, n=2)[0] is False
    assert bucket.take(T0 + 100 * S, n=5)[0] is False  # never more than burst at once
    with pytest.raises(ValueError):
        bucket.take(T0, n=-1)


def test_take_does_not_mutate() -> None:
    bucket = TokenBucket.full(1.0, 2, T0)
    before = dataclasses.astuple(bucket)
    bucket.take(T0 + S)
    bucket.take(T0 - S)
    assert dataclasses.astuple(bucket) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        bucket.tokens = 5  # type: ignore[misc]


def test_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=10, tokens=1.0, last_ns=T0)
    ok, back = bucket.take(T0 - 3600 * S)
    assert ok and back.tokens == 0.0
    assert back.last_ns == T0  # not moved back: no double refill later
    assert back.take(T0 - S)[0] is False
    # refill resumes from T0, not from the earlier instant
    assert back.refilled(T0 + S // 10).tokens == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_per_s": -1.0, "burst": 1.0, "tokens": 0.0},
        {"rate_per_s": float("nan"), "burst": 1.0, "tokens": 0.0},
        {"rate_per_s": 1.0, "burst": float("inf"), "tokens": 0.0},
        {"rate_per_s": 1.0, "burst": 1.0, "tokens": 2.0},
        {"rate_per_s": 1.0, "burst": 1.0, "tokens": -0.5},
    ],
)
def test_invalid_buckets_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(last_ns=T0, **kwargs)


rates = st.floats(min_value=0.01, max_value=1000.0)
bursts = st.floats(min_value=1.0, max_value=50.0)
steps = st.lists(
    st.tuples(
        st.integers(min_value=-2 * S, max_value=3 * S),  # clock step, may go backwards
        st.sampled_from([1, 1, 1, 2, 0.5]),  # tokens asked for
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(rates, bursts, steps)
def test_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, seq: list[tuple[int, float]]
) -> None:
    bucket = TokenBucket.full(rate, burst, T0)
    now = latest = T0
    admitted = 0.0
    for dt, n in seq:
        now += dt
        latest = max(latest, now)
        ok, bucket = bucket.take(now, n)
        admitted += n if ok else 0
        assert 0.0 <= bucket.tokens <= burst
        elapsed_s = (latest - T0) / S
        assert admitted <= burst + rate * elapsed_s + EPS


@settings(max_examples=200, deadline=None)
@given(rates, bursts, steps)
def test_a_quiet_interval_always_refills(
    rate: float, burst: float, seq: list[tuple[int, float]]
) -> None:
    """Liveness: whatever happened before, waiting burst/rate seconds past the latest
    instant seen makes the bucket full again."""
    bucket = TokenBucket.full(rate, burst, T0)
    now = T0
    for dt, n in seq:
        now += dt
        bucket = bucket.take(now, n)[1]
    wait_ns = int(burst / rate * S) + 1
    assert bucket.refilled(max(now, bucket.last_ns) + wait_ns).tokens == burst


@given(rates, bursts, st.floats(0, 1), st.integers(1, 10**12))
def test_backwards_clock_never_adds_tokens(
    rate: float, burst: float, fill: float, back_ns: int
) -> None:
    bucket = TokenBucket(rate, burst, fill * burst, T0)
    assert bucket.refilled(T0 - back_ns) == bucket
    ok, after = bucket.take(T0 - back_ns)
    assert after.tokens <= bucket.tokens and after.last_ns == T0
    assert ok == (bucket.tokens >= 1)


# ---- Limiter ----------------------------------------------------------------------------


def limiter(**kw: float) -> Limiter:
    args: dict[str, float] = {
        "per_peer_rate_per_s": 1.0,
        "per_peer_burst": 2,
        "global_rate_per_s": 10.0,
        "global_burst": 3,
    }
    args.update(kw)
    max_peers = int(args.pop("max_peers", 4096))
    return Limiter.create(**args, now_ns=T0, max_peers=max_peers)


def test_per_peer_refusal_spends_no_global_token() -> None:
    lim = limiter()
    r1, lim = lim.take("a", T0)
    r2, lim = lim.take("a", T0)
    r3, lim = lim.take("a", T0)
    assert (r1, r2, r3) == (LimitResult.ALLOWED, LimitResult.ALLOWED, LimitResult.PEER_LIMITED)
    assert lim.global_bucket.tokens == 1.0  # 3 - 2: the refused take cost nothing globally
    result, lim = lim.take("b", T0)
    assert result is LimitResult.ALLOWED and result.allowed


def test_global_refusal_still_spends_the_peer_token() -> None:
    lim = limiter(global_burst=1)
    assert lim.take("a", T0)[1].take("b", T0)[0] is LimitResult.GLOBAL_LIMITED
    _, lim = lim.take("a", T0)
    result, lim = lim.take("b", T0)
    assert result is LimitResult.GLOBAL_LIMITED and not result.allowed
    assert lim.peers["b"].tokens == 1.0  # consulted in order, as in XDP


def test_peers_are_independent_and_refill() -> None:
    lim = limiter(global_burst=100)
    for _ in range(2):
        _, lim = lim.take("a", T0)
    assert lim.take("a", T0)[0] is LimitResult.PEER_LIMITED
    assert lim.take("b", T0)[0] is LimitResult.ALLOWED
    assert lim.take("a", T0 + S)[0] is LimitResult.ALLOWED


def test_new_peer_bucket_is_not_dated_before_the_latest_instant() -> None:
    """A clock that went backwards must not let a new peer's bucket accrue tokens for
    time the limiter has already lived through."""
    lim = limiter(per_peer_burst=1, global_burst=100)
    result, lim = lim.take("a", T0 - 10 * S)  # clock stepped back 10 s
    assert result is LimitResult.ALLOWED
    assert lim.peers["a"].last_ns == T0
    assert lim.take("a", T0 + S // 2)[0] is LimitResult.PEER_LIMITED  # only 0.5 s later
    assert lim.take("a", T0 + S)[0] is LimitResult.ALLOWED


def test_limiter_is_immutable() -> None:
    lim = limiter()
    _, after = lim.take("a", T0)
    assert "a" not in lim.peers and "a" in after.peers
    with pytest.raises(TypeError):
        after.peers["x"] = TokenBucket.full(1, 1, T0)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.max_peers = 1  # type: ignore[misc]
    assert limiter() == limiter()
    hash(lim)


def test_eviction_drops_full_buckets_first() -> None:
    lim = limiter(max_peers=2, global_burst=100)
    _, lim = lim.take("busy", T0)
    _, lim = lim.take("busy", T0)  # empty
    _, lim = lim.take("idle", T0)  # 1 of 2 left, full again 1 s later
    _, lim = lim.take("new", T0 + S)
    assert set(lim.peers) == {"busy", "new"}
    assert lim.take("busy", T0 + S)[0] is LimitResult.ALLOWED  # refilled by 1, not reset
    assert lim.take("busy", T0 + S)[1].take("busy", T0 + S)[0] is LimitResult.PEER_LIMITED


def test_eviction_falls_back_to_least_recently_used() -> None:
    lim = limiter(max_peers=2, global_burst=100, per_peer_rate_per_s=0.001)
    _, lim = lim.take("old", T0)
    _, lim = lim.take("recent", T0 + S)
    _, lim = lim.take("new", T0 + 2 * S)
    assert set(lim.peers) == {"recent", "new"}


def test_invalid_limiter_rejected() -> None:
    with pytest.raises(ValueError):
        limiter(max_peers=0)
    with pytest.raises(ValueError):
        limiter(per_peer_burst=-1)
    with pytest.raises(ValueError):
        full = TokenBucket.full(1, 1, T0)
        Limiter(1.0, 1.0, full, {"a": full, "b": full}, max_peers=1)


limiter_steps = st.lists(
    st.tuples(st.integers(min_value=-S, max_value=2 * S), st.sampled_from("abcdef")),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(rates, bursts, rates, bursts, st.integers(min_value=1, max_value=8), limiter_steps)
def test_limiter_bounds(
    peer_rate: float,
    peer_burst: float,
    global_rate: float,
    global_burst: float,
    max_peers: int,
    seq: list[tuple[int, str]],
) -> None:
    """Globally: at most global_burst + global_rate * T admitted, always. Per peer:
    at most peer_burst + peer_rate * T tokens spent, when no bucket is evicted
    (max_peers >= the 6 peer names). The table never exceeds max_peers."""
    lim = Limiter.create(
        per_peer_rate_per_s=peer_rate,
        per_peer_burst=peer_burst,
        global_rate_per_s=global_rate,
        global_burst=global_burst,
        now_ns=T0,
        max_peers=max_peers,
    )
    now = latest = T0
    admitted = 0
    spent: dict[str, int] = {}
    for dt, peer in seq:
        now += dt
        latest = max(latest, now)
        result, lim = lim.take(peer, now)
        admitted += result is LimitResult.ALLOWED
        if result is not LimitResult.PEER_LIMITED:
            spent[peer] = spent.get(peer, 0) + 1
        elapsed_s = (latest - T0) / S
        assert len(lim.peers) <= max_peers
        assert admitted <= global_burst + global_rate * elapsed_s + EPS
        if max_peers >= 6 and peer in spent:
            assert spent[peer] <= peer_burst + peer_rate * elapsed_s + EPS


# ---- SourceLimiter: the same rule, in place, O(1) a take ------------------------------


@settings(max_examples=300, deadline=None)
@given(rates, bursts, rates, bursts, st.integers(min_value=1, max_value=8), limiter_steps)
def test_source_limiter_agrees_with_limiter_while_nothing_is_evicted(
    peer_rate: float,
    peer_burst: float,
    global_rate: float,
    global_burst: float,
    max_keys: int,
    seq: list[tuple[int, str]],
) -> None:
    """Step for step the same results as Limiter while the table never overflows, and
    always the global bound and the size bound."""
    kw = {"global_rate_per_s": global_rate, "global_burst": global_burst, "now_ns": T0}
    pure = Limiter.create(per_peer_rate_per_s=peer_rate, per_peer_burst=peer_burst, **kw)
    src = SourceLimiter(
        per_key_rate_per_s=peer_rate, per_key_burst=peer_burst, max_keys=max_keys, **kw
    )
    now = latest = T0
    admitted = 0
    seen: set[str] = set()
    for dt, key in seq:
        now += dt
        latest = max(latest, now)
        seen.add(key)
        got = src.take(key, now)
        want, pure = pure.take(key, now)
        if len(seen) <= max_keys:  # no eviction yet: exactly Limiter's answers
            assert got is want
            assert src.bucket(key) == pure.peers[key]
            assert src.global_bucket == pure.global_bucket
        admitted += got is LimitResult.ALLOWED
        assert len(src) <= max_keys
        assert admitted <= global_burst + global_rate * (latest - T0) / S + EPS


def test_source_limiter_evicts_the_least_recently_used_key() -> None:
    lim = SourceLimiter(
        per_key_rate_per_s=0.0, per_key_burst=1, global_rate_per_s=0.0, global_burst=100,
        now_ns=T0, max_keys=2,
    )  # fmt: skip
    assert lim.take("a", T0) is LimitResult.ALLOWED
    assert lim.take("b", T0) is LimitResult.ALLOWED
    assert lim.take("a", T0) is LimitResult.PEER_LIMITED  # "a" is now the most recent
    assert lim.take("c", T0) is LimitResult.ALLOWED  # evicts "b", not "a"
    assert lim.bucket("b") is None and lim.bucket("a") is not None
    assert lim.take("a", T0) is LimitResult.PEER_LIMITED  # "a" kept its empty bucket
    assert lim.take("b", T0) is LimitResult.ALLOWED  # "b" starts again: a fresh burst
    assert len(lim) == 2
    with pytest.raises(ValueError, match="max_keys"):
        SourceLimiter(
            per_key_rate_per_s=1.0, per_key_burst=1, global_rate_per_s=1.0, global_burst=1,
            now_ns=T0, max_keys=0,
        )  # fmt: skip


def test_source_limiter_holds_its_bounds_under_a_stream_of_new_sources() -> None:
    """A spoofed source per take: the table stays at max_keys, the global bucket bounds
    what is admitted."""
    lim = SourceLimiter(
        per_key_rate_per_s=1.0, per_key_burst=3, global_rate_per_s=100.0, global_burst=200,
        now_ns=T0, max_keys=4096,
    )  # fmt: skip
    admitted = 0
    for i in range(50_000):  # 50,000 sources over 5 s
        source = f"240.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        admitted += lim.take(source, T0 + i * 100_000) is LimitResult.ALLOWED
    assert len(lim) == 4096
    assert 200 + 100 * 4 <= admitted <= 200 + 100 * 5 + 1
