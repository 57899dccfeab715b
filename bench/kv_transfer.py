"""KV handoff throughput per CPU transport vs a plain torch copy of the same bytes.

    python -m bench.kv_transfer [--sizes-mib 1 16 64] [--trials 5]

Setup: a local Ray cluster on loopback, a pair of actors per transport (``num_cpus=0.25``, one torch thread each)
on this host. One handoff = sender ``offer`` + receiver ``pull`` + a copy of the pulled buffer
into a preallocated destination (what ``import_kv`` does) + ``confirm``; its time is the sum
of the actors' own timings, so Ray call overhead is left out (``wall_ms`` adds it back).
Transports: cpu_shm, cpu_ray (object store), cpu_gloo. Compared against a plain
``dst.copy_(src)`` of the same bytes in the receiving actor. Median of ``--trials``.
Prints one JSON line per (size, path): {"mib", "bytes", "path", "ms", "mb_per_s", "offer_ms",
"pull_ms" (pull + copy into the destination + confirm), "wall_ms", "vs_copy" (copy time / ms)}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "disabled", "GLOO_SOCKET_IFNAME": "lo"}
ROOT = Path(__file__).resolve().parents[1]


class Endpoint:
    """Sender or receiver; methods return their own elapsed seconds."""

    def __init__(self):
        self.transport = None
        self._store = None
        self.dst = None
        self.src = None

    def use_shm(self):
        from kv_transfer.cpu_shm import ShmTransport
        self.transport = ShmTransport()

    def use_ray(self):
        from kv_transfer.cpu_ray import RayObjectStoreTransport
        self.transport = RayObjectStoreTransport()

    def kv_transfer_call(self, verb, transfer_id):
        return self.transport.handle(verb, transfer_id)

    def gloo_listen(self):
        from kv_transfer.cpu_gloo import GlooTransport
        addr, self._store = GlooTransport.listen()
        return addr

    def gloo_join(self, addr, rank):
        from kv_transfer.cpu_gloo import GlooTransport
        self.transport = GlooTransport(addr, rank, store=self._store)

    def make(self, mib: int):
        import torch
        from engine.kv_cache import KVHandoff, KVHandoffMeta
        blocks = mib * 2**20 // (4 * 2 * 16 * 8 * 128 * 2)      # fp16, 4 layers, 8 heads x 128
        meta = KVHandoffMeta("bench", 4, 8, 128, 16, "float16", blocks * 16, tuple(range(blocks)), ())
        self.handoff = KVHandoff(meta, torch.randn(meta.shape).to(torch.float16))
        self.dst = torch.empty_like(self.handoff.buffer)
        self.src = self.handoff.buffer.clone()
        return self.handoff.nbytes

    def offer(self):
        start = time.perf_counter()
        ticket = self.transport.offer(self.handoff, 30.0)
        return ticket, time.perf_counter() - start

    def pull(self, ticket):
        start = time.perf_counter()
        handoff = self.transport.pull(ticket, 30.0)
        self.dst.copy_(handoff.buffer)
        del handoff
        self.transport.confirm(ticket)
        return time.perf_counter() - start

    def close(self):
        self.transport.close()

    def reap(self):
        deadline = time.monotonic() + 10
        while self.transport.pending() and time.monotonic() < deadline:
            self.transport.reap()
            time.sleep(0.001)
        return self.transport.pending()

    def plain_copy(self):
        start = time.perf_counter()
        self.dst.copy_(self.src)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--trials", type=int, default=7)
    args = ap.parse_args()
    os.environ.update(ENV)
    import ray

    temp = tempfile.mkdtemp(prefix="bkv")
    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, _temp_dir=temp,
             runtime_env={"env_vars": {**ENV, "PYTHONPATH": str(ROOT)}}, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=0.25)(Endpoint)     # six actors on two CPUs
        get = lambda refs: ray.get(refs, timeout=120)  # noqa: E731
        pairs = {}
        a, b = actor.remote(), actor.remote()
        get([a.use_shm.remote(), b.use_shm.remote()])
        pairs["cpu_shm"] = (a, b)
        e, f = (actor.options(name=f"bench-kv-{i}", max_concurrency=4).remote() for i in range(2))
        get([e.use_ray.remote(), f.use_ray.remote()])
        pairs["cpu_ray"] = (e, f)
        c, d = actor.remote(), actor.remote()
        addr = get(c.gloo_listen.remote())
        get([c.gloo_join.remote(addr, 0), d.gloo_join.remote(addr, 1)])
        pairs["cpu_gloo"] = (c, d)
        for mib in args.sizes_mib:
            nbytes = get([x.make.remote(mib) for pair in pairs.values() for x in pair])[0]
            rows = {}
            rows["torch_copy"] = [(get(b.plain_copy.remote()), 0.0, 0.0, 0.0) for _ in range(args.trials)]
            for name, (snd, rcv) in pairs.items():
                rows[name] = []
                for _ in range(args.trials):
                    t0 = time.perf_counter()
                    ticket, s_offer = get(snd.offer.remote())
                    s_pull = get(rcv.pull.remote(ticket))
                    wall = time.perf_counter() - t0
                    assert get(snd.reap.remote()) == []
                    rows[name].append((s_offer + s_pull, wall, s_offer, s_pull))
            copy_s = statistics.median(x[0] for x in rows["torch_copy"])
            for name, samples in rows.items():
                s, wall, offer, pull = (statistics.median(x[i] for x in samples) for i in range(4))
                print(json.dumps({"mib": mib, "bytes": nbytes, "path": name, "ms": round(s * 1e3, 3),
                                  "mb_per_s": round(nbytes / 1e6 / s, 1), "offer_ms": round(offer * 1e3, 3),
                                  "pull_ms": round(pull * 1e3, 3), "wall_ms": round(wall * 1e3, 3),
                                  "vs_copy": round(copy_s / s, 3)}), flush=True)
        get([x.close.remote() for pair in pairs.values() for x in pair])    # unlink pooled segments
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
