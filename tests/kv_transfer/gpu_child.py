"""Child-process halves of the GPU transport tests (spawned: CUDA cannot fork)."""

from __future__ import annotations

import hashlib
import time

import torch

from engine.kv_cache import KVHandoff, KVHandoffMeta


def gpu_handoff(blocks: int = 8) -> KVHandoff:
    meta = KVHandoffMeta("gpu", 4, 8, 128, 16, "bfloat16", blocks * 16, tuple(range(blocks)), ())
    g = torch.Generator(device="cuda").manual_seed(0)
    return KVHandoff(meta, torch.randn(meta.shape, device="cuda", generator=g).to(torch.bfloat16))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def cuda_ipc_receiver(ticket, q) -> None:
    from kv_transfer import select_transport

    rx = select_transport("cuda_ipc")
    got = rx.pull(ticket, 30.0)
    sha = digest(got.buffer)
    del got
    rx.confirm(ticket)
    q.put(sha)
    time.sleep(0.5)


def nccl_receiver(addr, tickets, answers) -> None:
    from kv_transfer.nccl import NcclTransport

    rx = NcclTransport(addr, 1)
    ticket = tickets.get(timeout=120)
    got = rx.pull(ticket, 30.0)
    sha = digest(got.buffer)
    rx.confirm(ticket)
    answers.put(sha)
    time.sleep(0.5)
    rx.close()
