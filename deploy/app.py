"""The Ray Serve application: one ingress deployment that fronts a Tandem cluster.

    app = build_app(ServeConfig(...))          # a bound Serve application
    serve.run(app, name="tandem", route_prefix="/")
    deploy_app(config, timeout_s)              # the same, with a deadline (CLI, tests)

The ingress replica's constructor (Ray is already up: Serve started it)::

    attach to the controller named ``controller_name`` if it exists, else build_cluster(...)
    tokenizer from the model folder · metrics registry · auth from api_keys
    gRPC server (deploy.grpc_server) on 127.0.0.1:grpc_port    ← Serve's own gRPC proxy binds
                                                                 every interface, so we don't use it
    FastAPI app (deploy.openai_api.make_app) as the replica's ASGI app, with the admin routes
    (deploy.admin_api: version weights, rollback) behind ``admin_api_keys``
    autoscaler (deploy.autoscale_loop, dry run by default) fed by both fronts' streams,
    its decisions at GET /v1/autoscale; with ``autoscale.dry_run: false`` it resizes the pools
    through ``ClusterHandle.resize``

With ``models:`` (deploy.multi_cluster) the replica attaches to or builds one cluster per
(model, version) and fronts them with a ``deploy.multi_backend.MultiBackend`` (per-model
tokenizers, for both fronts; no autoscaler yet).

Ownership: a replica that built the cluster owns it (the worker actors fate-share with the
replica's process) and shuts it down in ``__del__``; one that attached leaves it running.
Keep ``num_replicas`` at 1 when the replica builds the cluster: several replicas would race.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from deploy.auth import admin_key_auth, admin_keys_from_env, api_key_auth, keys_from_env
from deploy.config import ServeConfig

log = logging.getLogger("ray.serve")
GRPC_HOST = "127.0.0.1"
STOP_TIMEOUT_S = 60.0


def _cluster(config: ServeConfig):
    """(handle, owned): attach to the named controller, or build the cluster under that name."""
    import ray

    from cluster.builder import build_cluster
    from cluster.handle import ClusterHandle

    try:
        ray.get_actor(config.controller_name)
    except ValueError:
        return build_cluster(config.cluster, controller_name=config.controller_name), True
    return ClusterHandle.attach(config.controller_name), False


def _autoscaler(handle, config: ServeConfig):
    """The replica's autoscaler (None when ``config.autoscale`` is null); bundles from the pools;
    ``handle.resize`` carries out its decisions unless ``autoscale.dry_run`` (the default)."""
    if config.autoscale is None:
        return None
    from deploy.autoscale_loop import LiveAutoscaler, bundle

    p, d = config.cluster.prefill_resources, config.cluster.decode_resources
    return LiveAutoscaler(handle, config.autoscale, config.autoscale_interval_s, resize=handle.resize,
                          prefill_bundle=bundle(p.num_cpus, p.num_gpus),
                          decode_bundle=bundle(d.num_cpus, d.num_gpus))


@serve.ingress()
class TandemIngress:
    """The HTTP (OpenAI-compatible) and gRPC fronts of one cluster, in one replica."""

    async def __init__(self, config: dict):
        from transformers import AutoTokenizer

        from deploy.admin_api import mount_admin_routes
        from deploy.grpc_server import serve_grpc
        from deploy.metrics import ServingMetrics
        from deploy.openai_api import make_app
        from deploy.tracing import TracedBackend, configure_tracing

        cfg = ServeConfig.model_validate(config)
        loop = asyncio.get_running_loop()
        tokenizers = None
        if cfg.models is None:
            self._handle, self._owned = await loop.run_in_executor(None, _cluster, cfg)
        else:
            from deploy.multi_cluster import build_model_clusters, load_tokenizers

            self._handle = await loop.run_in_executor(None, build_model_clusters, cfg)
            self._owned = bool(self._handle.owned)
            tokenizers = await loop.run_in_executor(None, load_tokenizers, self._handle)
        info = self._handle.model_info()
        tokenizer = await loop.run_in_executor(None, AutoTokenizer.from_pretrained, info.path)
        auth = api_key_auth(cfg.api_keys)
        metrics = ServingMetrics(info.name)
        self._autoscaler = _autoscaler(self._handle, cfg) if cfg.models is None else None
        backend = self._handle if self._autoscaler is None else self._autoscaler.backend
        provider = configure_tracing(cfg.tracing)
        if provider is not None:                      # per-request spans when an exporter is set
            backend = TracedBackend(backend, provider.get_tracer("tandem"))
        self._grpc = await serve_grpc(backend, tokenizer, auth, GRPC_HOST, cfg.grpc_port,
                                      tokenizers=tokenizers)
        self._app = make_app(backend, tokenizer, metrics, auth, max_body_bytes=cfg.max_body_bytes,
                             default_max_tokens=cfg.default_max_tokens, tokenizers=tokenizers)
        mount_admin_routes(self._app, self._handle, admin_key_auth(cfg.admin_api_keys, cfg.api_keys))
        if self._autoscaler is not None:
            from deploy.autoscale_loop import mount_autoscale_route

            mount_autoscale_route(self._app, self._autoscaler)
            self._autoscaler.start()
        log.info("tandem ingress: model %s, gRPC on %s:%d, %s", info.name, GRPC_HOST, cfg.grpc_port,
                 f"{len(cfg.api_keys)} API keys" if cfg.api_keys else "one open tenant")

    def __serve_build_asgi_app__(self):
        return self._app

    async def __del__(self):
        autoscaler = getattr(self, "_autoscaler", None)
        if autoscaler is not None:
            await autoscaler.stop()
        grpc_server = getattr(self, "_grpc", None)
        if grpc_server is not None:
            await grpc_server.stop(1.0)
        if getattr(self, "_owned", False):
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(None, self._handle.shutdown), STOP_TIMEOUT_S)


def build_app(config: ServeConfig):
    """The bound Serve application for ``config``. API keys from ``$TANDEM_API_KEYS`` and admin
    keys from ``$TANDEM_ADMIN_KEYS`` (read here, in the caller's process) are merged with
    ``config.api_keys`` / ``config.admin_api_keys``; raises ``ValueError`` (pydantic's
    ``ValidationError``) if the merged keys conflict."""
    keys = {**keys_from_env(), **config.api_keys}
    admin = list(dict.fromkeys([*config.admin_api_keys, *admin_keys_from_env()]))
    config = ServeConfig.model_validate({**config.model_dump(mode="json"), "api_keys": keys,
                                         "admin_api_keys": admin})
    deployment = serve.deployment(TandemIngress, name="tandem-ingress", num_replicas=1,
                                  max_ongoing_requests=1024, health_check_timeout_s=60,
                                  graceful_shutdown_timeout_s=STOP_TIMEOUT_S,
                                  ray_actor_options={"num_cpus": config.ingress_num_cpus})
    return deployment.bind(config.model_dump(mode="json"))


def deploy_app(config: ServeConfig, timeout_s: float | None = None, name: str = "tandem") -> None:
    """Deploy ``build_app(config)`` on the running Serve instance and wait until it is RUNNING.

    Raises ``RuntimeError`` if it fails to deploy or is not running within ``timeout_s`` (default:
    the cluster's ``ready_timeout_s`` plus two minutes for Serve and calibration)."""
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + (timeout_s or config.cluster.ready_timeout_s + 120.0)
    serve.run_many([serve.RunTarget(build_app(config), name=name, route_prefix="/")],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    while True:
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"the Serve application failed to deploy: {app.message}")
        if time.monotonic() > deadline:
            state = app.status if app is not None else "absent"
            raise RuntimeError(f"the Serve application is not running after the deadline ({state})")
        time.sleep(0.5)
