"""Transport contracts inside one process (no Ray): dtypes as raw bytes, ticket checks, confirm rules.

The gloo pair runs its two ranks in two threads of this process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.kv_cache import KVHandoff, KVHandoffMeta
from kv_transfer import select_transport, transport_class
from kv_transfer.cpu_gloo import GlooTransport
from kv_transfer.cpu_shm import ShmTransport, reap_orphans
from kv_transfer.transport import ReleaseReason, TransferFailed, TransferTimeout


def handoff(dtype=torch.bfloat16, blocks=3) -> KVHandoff:
    meta = KVHandoffMeta("r1", 2, 2, 8, 16, str(dtype).removeprefix("torch."), blocks * 16,
                         tuple(range(blocks)), tuple(range(blocks * 16)))
    return KVHandoff(meta, torch.randn(meta.shape, generator=torch.Generator().manual_seed(0)).to(dtype))


@pytest.fixture
def gloo_pair(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    addr, store = GlooTransport.listen()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("rx", GlooTransport(addr, 1, connect_timeout_s=20)))
    t.start()
    tx = GlooTransport(addr, 0, store, connect_timeout_s=20)
    t.join(timeout=30)
    yield tx, box["rx"]
    tx.close()
    box["rx"].close()


@pytest.fixture
def shm_pair():
    before = sorted(Path("/dev/shm").glob("tandem-kv-*"))
    tx, rx = ShmTransport(), ShmTransport()
    yield tx, rx
    tx.close()
    rx.close()
    assert set(Path("/dev/shm").glob("tandem-kv-*")) <= set(before), "leaked /dev/shm segments"


def _reap_until(tx, timeout_s=5.0):
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        released = tx.reap()
        if released:
            return released
        time.sleep(0.005)
    return []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_shm_round_trip_keeps_every_dtype_bit_exact(shm_pair, dtype):
    tx, rx = shm_pair
    h = handoff(dtype)
    ticket = tx.offer(h, 5.0)
    got = rx.pull(ticket, 1.0)
    assert got.buffer.dtype == dtype and torch.equal(got.buffer.view(torch.uint8), h.buffer.view(torch.uint8))
    del got
    rx.confirm(ticket)
    [r] = tx.reap()
    assert r.reason is ReleaseReason.CONFIRMED and tx.pending() == []


def test_gloo_round_trip_of_bfloat16_is_bit_exact(gloo_pair):
    tx, rx = gloo_pair
    h = handoff(torch.bfloat16)
    ticket = tx.offer(h, 5.0)
    got = rx.pull(ticket, 5.0)
    assert torch.equal(got.buffer.view(torch.uint8), h.buffer.view(torch.uint8))
    rx.confirm(ticket)
    [r] = _reap_until(tx)
    assert r.reason is ReleaseReason.CONFIRMED


def test_gloo_pull_of_an_unknown_tag_times_out_and_the_pair_survives(gloo_pair):
    tx, rx = gloo_pair
    ticket = tx.offer(handoff(), 5.0)
    lost = dataclasses.replace(ticket, sender=dataclasses.replace(ticket.sender, tag=10_000))
    start = time.monotonic()
    with pytest.raises(TransferTimeout):
        rx.pull(lost, 0.3)
    assert time.monotonic() - start < 1.5
    rx.pull(ticket, 5.0)                      # the pair still works after a timed-out pull
    rx.confirm(ticket)


def test_gloo_expired_offer_is_withdrawn_and_a_late_pull_fails_fast(gloo_pair):
    tx, rx = gloo_pair
    ticket = tx.offer(handoff(), 0.2)
    [r] = _reap_until(tx)
    assert r.reason is ReleaseReason.EXPIRED
    late = dataclasses.replace(ticket, deadline=time.time() + 5)
    with pytest.raises(TransferFailed, match="withdrawn or expired"):
        rx.pull(late, 2.0)


@pytest.mark.parametrize("kind", ["cpu_shm", "cpu_gloo"])
def test_confirm_without_pull_and_double_confirm_are_errors(kind, shm_pair, gloo_pair):
    tx, rx = shm_pair if kind == "cpu_shm" else gloo_pair
    ticket = tx.offer(handoff(), 5.0)
    with pytest.raises(TransferFailed, match="not pulled here"):
        rx.confirm(ticket)
    rx.pull(ticket, 5.0)
    rx.confirm(ticket)
    with pytest.raises(TransferFailed, match="already confirmed"):
        rx.confirm(ticket)
    assert _reap_until(tx)[0].reason is ReleaseReason.CONFIRMED


def test_expired_or_foreign_tickets_are_refused_before_any_io(shm_pair):
    tx, rx = shm_pair
    ticket = tx.offer(handoff(), 5.0)
    with pytest.raises(TransferTimeout, match="expired before pull"):
        rx.pull(dataclasses.replace(ticket, deadline=time.time() - 1), 1.0)
    with pytest.raises(TransferFailed, match="not 'cpu_shm'"):
        rx.pull(dataclasses.replace(ticket, transport="cpu_gloo"), 1.0)
    tx.abort(ticket)                          # the sender withdraws: freed at once
    assert tx.pending() == []
    with pytest.raises(TransferFailed, match="released by the sender"):
        rx.pull(ticket, 1.0)


def test_unpulled_shm_offer_expires_on_reap(shm_pair):
    tx, _ = shm_pair
    ticket = tx.offer(handoff(), 5.0)
    assert tx.reap(now=time.time()) == []
    [r] = tx.reap(now=ticket.deadline)
    assert r.reason is ReleaseReason.EXPIRED


def test_confirmed_segments_are_reused_and_stale_tickets_refused(shm_pair):
    tx, rx = shm_pair
    first = tx.offer(handoff(), 5.0)
    rx.pull(first, 1.0)
    rx.confirm(first)
    tx.reap()
    second = tx.offer(handoff(blocks=2), 5.0)
    assert second.sender.endpoint == first.sender.endpoint          # same pooled segment
    with pytest.raises(TransferFailed, match="released and reused"):
        rx.pull(first, 1.0)
    got = rx.pull(second, 1.0)
    assert torch.equal(got.buffer.view(torch.uint8), handoff(blocks=2).buffer.view(torch.uint8))
    del got
    rx.abort(second)
    [r] = tx.reap()
    assert r.reason is ReleaseReason.ABORTED
    third = tx.offer(handoff(), 5.0)                                # aborted: not reused
    assert third.sender.endpoint != first.sender.endpoint


def test_reap_orphans_removes_segments_of_dead_processes(tmp_path):
    (tmp_path / "tandem-kv-999999999-abc").write_bytes(b"x" * 64)
    (tmp_path / "tandem-kv-1-def").write_bytes(b"x" * 64)           # pid 1 is alive
    assert reap_orphans(tmp_path) == ["tandem-kv-999999999-abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["tandem-kv-1-def"]


def test_select_transport_builds_and_rejects():
    assert isinstance(select_transport("cpu"), ShmTransport)
    assert transport_class("cpu_gloo") is GlooTransport
    with pytest.raises(ValueError, match="unknown KV transport"):
        select_transport("carrier-pigeon")
