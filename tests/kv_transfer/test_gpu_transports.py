"""CUDA IPC and NCCL transports: importable everywhere, exercised only where CUDA is present."""

from __future__ import annotations

import pytest
import torch

from kv_transfer import TransferFailed, select_transport, transport_class

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_transports_import_without_cuda():
    assert transport_class("cuda_ipc").name == "cuda_ipc"
    assert transport_class("nccl").name == "nccl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpu_transports_refuse_to_start_without_cuda():
    with pytest.raises(TransferFailed, match="needs a CUDA device"):
        select_transport("cuda_ipc")


@pytest.mark.gpu
@needs_cuda
def test_cuda_ipc_round_trip_between_processes_is_bit_exact():
    """Sender in this process, receiver in a spawned child on the same GPU."""
    import multiprocessing as mp

    from tests.kv_transfer.gpu_child import cuda_ipc_receiver, gpu_handoff

    tx = select_transport("cuda_ipc")
    h = gpu_handoff()
    ticket = tx.offer(h, 30.0)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=cuda_ipc_receiver, args=(ticket, q))
    p.start()
    sha = q.get(timeout=120)
    p.join(timeout=60)
    from tests.kv_transfer.gpu_child import digest

    assert sha == digest(h.buffer)
    import time
    until = time.monotonic() + 10
    while tx.pending() and time.monotonic() < until:
        tx.reap()
        time.sleep(0.01)
    assert tx.pending() == []


@pytest.mark.gpu
@needs_cuda
def test_nccl_round_trip_between_processes_is_bit_exact():
    pytest.importorskip("cupy")
    import multiprocessing as mp

    from kv_transfer.nccl import NcclTransport
    from tests.kv_transfer.gpu_child import digest, gpu_handoff, nccl_receiver

    addr, store = NcclTransport.listen()
    ctx = mp.get_context("spawn")
    tickets, answers = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=nccl_receiver, args=(addr, tickets, answers))
    p.start()
    tx = NcclTransport(addr, 0, store)
    h = gpu_handoff()
    tickets.put(tx.offer(h, 60.0))
    sha = answers.get(timeout=120)
    p.join(timeout=60)
    assert sha == digest(h.buffer)
    tx.close()
