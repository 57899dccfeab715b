"""A local Ray cluster on loopback for tests, with this machine's Ray 2.60 settings.

Ray binds to eth0 and requires token auth by default here (see ../shared/ENVIRONMENT.md); the
environment below keeps everything on 127.0.0.1, disables auth and usage stats, and the
cluster gets its own temp dir (a reused one makes ``ray.init`` attach to a dead cluster).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "disabled", "GLOO_SOCKET_IFNAME": "lo"}


def shm_segments() -> set[str]:
    """Names of this project's KV handoff segments in /dev/shm."""
    return {p.name for p in Path("/dev/shm").glob("tandem-kv-*")}


@contextlib.contextmanager
def local_ray(prefix: str = "tray"):
    """Start a 2-CPU loopback Ray cluster (256 MiB object store), shut it down on exit."""
    import ray

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    temp = _init(ray, prefix)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


STARTUP_FAILURES = ("timed out during startup", "Timed out waiting for file")


@contextlib.contextmanager
def serve_app(config, prefix: str, timeout_s: float):
    """``local_ray`` plus Ray Serve on 127.0.0.1:``config.http_port`` with the Tandem app of
    ``config`` (a ``deploy.config.ServeConfig``) deployed; yields the config, shuts Serve down."""
    from ray import serve

    from deploy.app import deploy_app

    with local_ray(prefix):
        serve.start(http_options={"host": "127.0.0.1", "port": config.http_port})
        try:
            deploy_app(config, timeout_s=timeout_s)
            yield config
        finally:
            serve.shutdown()


def _init(ray, prefix: str, attempts: int = 3) -> str:
    """``ray.init`` in a fresh temp dir, again in another one if the node does not come up.

    The test process forks Ray's GCS and raylet; a fork while another thread of this process is
    inside gRPC (the front and SDK tests run gRPC here; Ray's own client threads too) skips
    gRPC's fork handlers, and now and then the child never writes its port file (Ray then gives
    up after 30 s). A new attempt forks at another moment. Returns the temp dir in use."""
    for attempt in range(attempts):
        temp = tempfile.mkdtemp(prefix=prefix)
        try:
            ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, _temp_dir=temp,
                     runtime_env={"env_vars": {**ENV, "PYTHONPATH": str(ROOT)}}, log_to_driver=False)
            return temp
        except Exception as exc:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
            if attempt + 1 == attempts or not any(m in str(exc) for m in STARTUP_FAILURES):
                raise
    raise AssertionError("unreachable")


def tiny_cluster_config(model_dir, **overrides):
    """The test clusters' ``ClusterConfig``: a tiny model on CPU in fp32 with torch kernels, half a
    CPU per worker, a short calibration and SLOs loose enough for a shared 2-core machine."""
    from cluster.config import ClusterConfig

    base = dict(model=str(model_dir), device="cpu", dtype="float32", kernels="torch", num_blocks=256,
                calibration_steps=32, prefill_resources={"num_cpus": 0.5}, decode_resources={"num_cpus": 0.5},
                scenario="chatbot", slo_scale=50.0, min_ttft_s=5.0)
    return ClusterConfig(**{**base, **overrides})
