"""One writer per run (`run_lease`), on a local folder and on a real S3 server (moto's
conditional writes): a second holder is refused with the holder's name and when its lease ends;
a killed holder's lease is taken over after it expires and never sooner; the old holder then
finds it lost; a waiting writer takes it the moment it expires."""

from __future__ import annotations

import time

import pytest

from synthpref.run_lease import LEASE_KEY, LeaseHeldError, LeaseLostError, RunLease, hold
from synthpref.storage import Storage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def lease(storage: Storage, clock: Clock, name: str) -> RunLease:
    return RunLease(storage, name, ttl_s=60, holder=name, clock=clock, sleep=clock.sleep)


def test_a_second_writer_is_refused_until_the_first_lease_expires(storage: Storage) -> None:
    clock = Clock()
    first, second = lease(storage, clock, "first"), lease(storage, clock, "second")
    first.acquire()
    with pytest.raises(LeaseHeldError) as refused:
        second.acquire()
    message = str(refused.value)
    assert "another writer holds this run: first" in message
    assert "its lease ends at 1970-01-12T13:47:40Z (in 60 s)" in message
    # The holder was killed: it renews no more. One second before expiry: still refused.
    clock.now += 59
    with pytest.raises(LeaseHeldError, match="in 1 s"):
        second.acquire()
    clock.now += 1  # expired: taken over, and the old holder finds it lost
    second.acquire()
    with pytest.raises(LeaseLostError, match="taken over by second"):
        first.renew()
    # Renewed, the new holder keeps it past the first expiry.
    clock.now += 50
    second.renew()
    clock.now += 50
    with pytest.raises(LeaseHeldError):
        lease(storage, clock, "third").acquire()
    second.release()
    assert not storage.exists(LEASE_KEY)
    lease(storage, clock, "third").acquire()


def test_a_waiting_writer_takes_it_when_it_expires_not_before(storage: Storage) -> None:
    clock = Clock()
    lease(storage, clock, "killed").acquire()
    clock.now += 20
    waiting = lease(storage, clock, "waiting")
    waiting.acquire(wait_s=120)
    assert clock.now >= 1_000_060.0 and sum(clock.slept) <= 41.0
    assert "waiting" in storage.read_bytes(LEASE_KEY).decode()


def test_release_if_held_leaves_another_holders_lease(storage: Storage) -> None:
    clock = Clock()
    holder = lease(storage, clock, "holder")
    holder.acquire()
    lease(storage, clock, "other").release_if_held()
    assert storage.exists(LEASE_KEY)
    lease(storage, clock, "holder").release_if_held()  # the same holder name: its own
    assert not storage.exists(LEASE_KEY)


def test_hold_renews_from_a_thread_and_releases(storage: Storage) -> None:
    with hold(storage, "a block", ttl_s=0.3) as held:
        first = storage.read_bytes(LEASE_KEY)
        time.sleep(0.5)  # a renewal every 0.1 s
        assert storage.read_bytes(LEASE_KEY) != first
        with pytest.raises(LeaseHeldError, match=r"\(a block\)"):
            RunLease(storage, "another").acquire()
        assert held.holder in storage.read_bytes(LEASE_KEY).decode()
    assert not storage.exists(LEASE_KEY)
