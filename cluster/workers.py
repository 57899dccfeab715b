"""How a worker actor is started: the one place both the builder and a pool resize use.

    specs = worker_specs(config, model_path, transport)     # {role: WorkerSpec}, plain data
    group = reserve(spec, n)                                 # a placement group of n bundles (PACK)
    actor = start_worker(spec, Placement(group, i))          # the actor in bundle i

A ``WorkerSpec`` holds what every worker of a pool is started with (engine config, transport,
resources, deadlines, restarts); the controller keeps one per pool so a resize starts workers
exactly like the builder did, on the same model, without calibrating again. Nothing here waits:
callers wait for the group's ``ready()`` and the actor's ``ready`` with their own deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.config import ClusterConfig, WorkerResources
from cluster.placements import Placement, Placements
from engine.config import EngineConfig
from router.plan import WorkerRole

PREFIX = {WorkerRole.PREFILL: "p", WorkerRole.DECODE: "d", WorkerRole.COLOCATED: "c"}


@dataclass(frozen=True)
class WorkerSpec:
    """One pool's worker recipe. ``prefix`` + a number is a worker's id (``d0``, ``d1``...)."""

    role: WorkerRole
    engine: EngineConfig
    transport: str
    num_cpus: float
    num_gpus: float
    max_restarts: int
    deadlines: dict[str, float] = field(default_factory=dict)   # the actor's deadline kwargs

    @property
    def prefix(self) -> str:
        return PREFIX[self.role]

    def bundle(self) -> dict[str, float]:
        """The Ray resource bundle one worker of this pool reserves."""
        return {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {})}


@dataclass
class PoolSpecs:
    """What resizing the pools needs: each pool's ``WorkerSpec`` and the placement book. The
    builder fills the book and hands both to the controller, which owns them from then on."""

    specs: dict[WorkerRole, WorkerSpec]
    placements: Placements


def engine_config(config: ClusterConfig, model_path: str, resources: WorkerResources) -> EngineConfig:
    """The engine settings of a worker with ``resources`` (device ``auto``: CUDA if it has GPUs)."""
    device = config.device
    if device == "auto":
        device = "cuda" if resources.num_gpus > 0 else "cpu"
    return EngineConfig(model=model_path, device=device, dtype=config.dtype, kernels=config.kernels,
                        block_size=config.block_size, num_blocks=config.num_blocks,
                        gpu_memory_utilization=config.gpu_memory_utilization,
                        max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs,
                        max_model_len=config.max_model_len, num_threads=resources.threads)


def worker_specs(config: ClusterConfig, model_path: str, transport: str) -> dict[WorkerRole, WorkerSpec]:
    """The cluster's pools: colocated only, or prefill and decode (in that order)."""
    if config.colocated_workers:
        pools = {WorkerRole.COLOCATED: config.colocated_resources}
    else:
        pools = {WorkerRole.PREFILL: config.prefill_resources, WorkerRole.DECODE: config.decode_resources}
    specs = {}
    for role, res in pools.items():
        deadlines = ({"handoff_deadline_s": config.handoff_deadline_s} if role is WorkerRole.PREFILL
                     else {"pull_deadline_s": config.pull_deadline_s})
        specs[role] = WorkerSpec(role, engine_config(config, model_path, res), transport, res.num_cpus,
                                 res.num_gpus, config.max_restarts, deadlines)
    return specs


def pool_size(config: ClusterConfig, role: WorkerRole) -> int:
    """How many workers of ``role`` the builder starts."""
    return {WorkerRole.PREFILL: config.prefill_workers, WorkerRole.DECODE: config.decode_workers,
            WorkerRole.COLOCATED: config.colocated_workers}[role]


def reserve(spec: WorkerSpec, n: int):
    """A placement group of ``n`` of ``spec``'s bundles, PACK (a pool's workers stay together where
    they fit). Returns at once; wait for ``group.ready()`` with a deadline before relying on it."""
    from ray.util.placement_group import placement_group

    return placement_group([spec.bundle()] * n, strategy="PACK")


def start_worker(spec: WorkerSpec, where: Placement) -> Any:
    """Start one worker actor of ``spec``'s pool in bundle ``where`` (returns its handle at once;
    its constructor loads the model: wait for ``ready`` with a deadline). Ray restarts it up to
    ``max_restarts`` times; calls are never retried (the controller decides what to do again)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if spec.role is WorkerRole.PREFILL:
        from prefill_worker.worker import PrefillWorker as cls
    else:
        from decode_worker.worker import DecodeWorker as cls
    strategy = PlacementGroupSchedulingStrategy(where.group, placement_group_bundle_index=where.index)
    return ray.remote(cls).options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
                                   max_restarts=spec.max_restarts, max_task_retries=0,
                                   scheduling_strategy=strategy).remote(spec.engine, spec.transport,
                                                                        **spec.deadlines)
