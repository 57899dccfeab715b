"""The one builder that wires the actor graph from a ``ClusterConfig``::

    handle = build_cluster(config)          # Ray up (RAY_ADDRESS or local), pools, controller
    async for item in handle.generate(req): ...
    handle.shutdown()

Steps: connect to Ray (``config.ray_address``, else ``$RAY_ADDRESS``, else a local loopback
cluster); one placement group per pool (a bundle per worker, PACK) so a pool's actors stay where
they were planned; start the workers (``cluster.workers.start_worker``, ``max_restarts`` so Ray
restarts a dead one); wait for ``ready`` within ``ready_timeout_s``; calibrate the performance
model on prefill worker 0 (``calibration_steps``); start the controller (an async actor) and its
loops. The controller gets the pools' ``WorkerSpec``s and the placement book, so that
``ClusterHandle.resize`` later starts and stops workers the same way (``cluster.resize``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cluster.backend import ModelInfo
from cluster.config import ClusterConfig
from cluster.handle import ClusterHandle
from cluster.placements import Placements
from cluster.workers import PoolSpecs, engine_config, pool_size, reserve, start_worker, worker_specs

__all__ = ["build_cluster", "connect_ray", "engine_config"]

# Ray 2.60 on a single machine: everything on loopback, no auth token, no usage report
# (../shared/ENVIRONMENT.md). Set only where the caller has not.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "RAY_AUTH_MODE": "disabled", "GLOO_SOCKET_IFNAME": "lo"}
ROOT = Path(__file__).resolve().parents[1]


def connect_ray(config: ClusterConfig, num_cpus: int | None = None) -> bool:
    """Attach to ``config.ray_address`` / ``$RAY_ADDRESS`` or start a local cluster.

    Returns True when this call started Ray (the caller then owns its shutdown).
    """
    import ray

    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    env = {k: os.environ.setdefault(k, v) for k, v in LOCAL_ENV.items()}
    runtime_env = {"env_vars": {**env, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or max(2, os.cpu_count() or 2), object_store_memory=256 * 2**20,
                 include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="tandem-ray-"),
                 runtime_env=runtime_env, log_to_driver=False)
    return True


def _transport(config: ClusterConfig) -> str:
    if config.transport != "auto":
        return config.transport
    gpu = config.prefill_resources.num_gpus > 0 and config.decode_resources.num_gpus > 0
    return "nccl" if gpu and config.ray_address else ("cuda_ipc" if gpu else "cpu_shm")


def _model_path(config: ClusterConfig) -> str:
    if config.model is not None:
        return config.model
    from engine.default_model import ensure_default_model

    return str(ensure_default_model(log=lambda *a: None))


def build_cluster(config: ClusterConfig, controller_name: str | None = None) -> ClusterHandle:
    """Start everything (see the module docstring). ``controller_name`` names the controller actor
    so other processes (Serve replicas) can find it with ``ClusterHandle.attach``."""
    import ray
    from ray.util.placement_group import remove_placement_group

    from cluster.controller import Controller
    from engine.model_config import load_model_spec
    from router.plan import WorkerRole

    started = connect_ray(config)
    path = _model_path(config)
    spec = load_model_spec(path)
    specs = worker_specs(config, path, _transport(config))
    book, actors = Placements(), {}
    try:
        for role, ws in specs.items():
            n = pool_size(config, role)
            group = reserve(ws, n)
            book.add(ws.prefix, group, n)
            ray.get(group.ready(), timeout=config.ready_timeout_s)
            for i in range(n):
                wid = f"{ws.prefix}{i}"
                actors[wid] = start_worker(ws, book.take(ws.prefix, wid))
        ray.get([a.ready.remote() for a in actors.values()], timeout=config.ready_timeout_s)
        stats = dict(zip(actors, ray.get([a.stats.remote() for a in actors.values()],
                                         timeout=config.ready_timeout_s)))
        capacities = {w: s.kv_capacity_tokens for w, s in stats.items()}
        perf = _calibrate(config, actors.get("p0") or actors.get("c0"))
        info = ModelInfo(config.served_model_name or Path(path).name, path,
                         min(spec.max_model_len, config.max_model_len or spec.max_model_len), spec.vocab_size)

        def of(role: WorkerRole) -> dict:
            return {w: a for w, a in actors.items() if role in specs and w.startswith(specs[role].prefix)}

        controller = ray.remote(Controller).options(num_cpus=0, max_concurrency=10_000, name=controller_name,
                                                    get_if_exists=False).remote(
            config, of(WorkerRole.PREFILL), of(WorkerRole.DECODE), info, perf, capacities,
            of(WorkerRole.COLOCATED), PoolSpecs(specs, book))
        ray.get(controller.start.remote(), timeout=config.ready_timeout_s)
    except BaseException:
        for a in actors.values():
            ray.kill(a)
        for pg in book.groups():
            remove_placement_group(pg)
        if started:
            ray.shutdown()
        raise
    return ClusterHandle(controller, info, actors, book.groups(), started, config)


def _calibrate(config: ClusterConfig, worker):
    """Fit the batch-time model on prefill worker 0 (colocated clusters: on worker c0), or a
    conservative placeholder without steps."""
    import ray

    from router.perf_model import AffinePiece, PerfModel

    if config.calibration_steps >= 32 and worker is not None:
        result = ray.get(worker.calibrate.remote(config.calibration_steps), timeout=config.ready_timeout_s)
        return result.model
    # 1 ms per prefill token and 50 ms per step: slow on purpose; online refits replace it.
    return PerfModel((AffinePiece(0.05, (1e-3, 0.0, 0.0, 0.0, 0.0)),))
