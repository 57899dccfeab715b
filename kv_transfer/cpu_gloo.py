"""CPU transport over a torch.distributed gloo pair: rank 0 is the prefill side, rank 1 the decode side.

One ``ProcessGroupGloo`` of size two per prefill/decode pair (no global default group, so a
worker can hold several pairs). Rendezvous and control go through a ``TCPStore`` the sender
opens on 127.0.0.1 (``GLOO_SOCKET_IFNAME=lo`` keeps gloo on loopback); the address travels
through Ray::

    addr = ray.get(prefill.gloo_listen.remote(), timeout=30)          # GlooTransport.listen()
    ray.get([prefill.gloo_join.remote(addr, 0), decode.gloo_join.remote(addr, 1)], timeout=60)

The handshake and the deadlines are ``pair.StorePairTransport``'s; this file only moves bytes.
Gloo waits use the group's long timeout: they start only once the sender has committed.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

from kv_transfer.pair import PairAddress, StorePairTransport, open_store

GlooPairAddress = PairAddress


class GlooTransport(StorePairTransport):
    name = "cpu_gloo"

    @staticmethod
    def listen(name: str | None = None, host: str = "127.0.0.1") -> tuple[PairAddress, dist.TCPStore]:
        """Sender side: open the rendezvous store. Pass the store to rank 0's constructor."""
        store = open_store(host)
        return PairAddress(host, store.port, name or f"kvpair-{uuid.uuid4().hex[:8]}"), store

    def _join_data(self, store: dist.Store, timeout: timedelta) -> None:
        self._pg = dist.ProcessGroupGloo(dist.PrefixStore(self.address.name, store), self.rank, 2, timeout)

    def _send_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        self._pg.send([data], 1, tag).wait()

    def _recv_bytes(self, data: torch.Tensor, tag: int, until: float) -> None:
        self._pg.recv([data], 0, tag).wait()

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)
