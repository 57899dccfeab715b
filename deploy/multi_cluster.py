"""The clusters of a multi-model app (``ServeConfig.models``): one per (model, version).

    clusters = build_model_clusters(serve_config)   # a MultiBackend that also owns its clusters
    app = make_app(clusters, ..., tokenizers=load_tokenizers(clusters))
    clusters.shutdown()                             # stops the clusters this call built

Each version's cluster runs under the controller name ``{controller_name}-{model}-{version}``
with ``served_model_name`` = the model's served name; one that already runs is attached to (and
left running on shutdown), the others are built one after another: building them from threads
at once was no faster on 2 cores, and two clusters of the same model built together came up
unable to serve (their requests hung) in two runs of three. Startup fails (``ValueError``) if a
model and its fallback or a lane target have different vocabularies: substitutes receive the
requested model's token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.config import ClusterConfig
from deploy.config import ServeConfig
from deploy.model_router import ModelRouter
from deploy.multi_backend import Key, MultiBackend


class ModelClusters(MultiBackend):
    """A ``MultiBackend`` over ``cluster.handle.ClusterHandle``s; ``owned`` are the ones to stop."""

    def __init__(self, handles: dict[Key, Any], owned: set[Key], router: ModelRouter,
                 overload_state_of: Callable[[str], str] | None = None):
        super().__init__(handles, router, overload_state_of)
        self.owned = owned
        check_vocabularies(self)

    def shutdown(self) -> None:
        for key in self.owned:
            self.backends[key].shutdown()


def check_vocabularies(backend: MultiBackend) -> None:
    infos = {i.name: i for i in backend.model_infos()}
    for name, route in backend.router.routes.models.items():
        for target in {route.fallback, *route.lanes.values()} - {None, name}:
            if infos[target].vocab_size != infos[name].vocab_size:
                raise ValueError(f"{name!r} and its substitute {target!r} have different vocabularies "
                                 f"({infos[name].vocab_size} vs {infos[target].vocab_size})")


def controller_name(config: ServeConfig, model: str, version: str) -> str:
    return f"{config.controller_name}-{model}-{version}"


def _attach_or_build(cluster: ClusterConfig, name: str) -> tuple[Any, bool]:
    import ray

    from cluster.builder import build_cluster
    from cluster.handle import ClusterHandle

    try:
        ray.get_actor(name)
    except ValueError:
        return build_cluster(cluster, controller_name=name), True
    return ClusterHandle.attach(name), False


def build_model_clusters(config: ServeConfig,
                         overload_state_of: Callable[[str], str] | None = None) -> ModelClusters:
    """Attach to or build every version's cluster of ``config.models`` (see the module docstring);
    on any failure the clusters built so far are stopped and the error raised."""
    from cluster.builder import connect_ray

    routes = config.routes()
    if routes is None:
        raise ValueError("the config has no models section")
    jobs = {(m, v): (c.model_copy(update={"served_model_name": m}), controller_name(config, m, v))
            for m, served in config.models.items() for v, c in served.clusters.items()}
    connect_ray(next(iter(jobs.values()))[0])      # once, not owned: Ray outlives the clusters
    results: dict[Key, tuple[Any, bool]] = {}
    try:
        for key, (cluster, name) in jobs.items():
            results[key] = _attach_or_build(cluster, name)
        handles = {k: h for k, (h, _) in results.items()}
        owned = {k for k, (_, mine) in results.items() if mine}
        windows = {m: handles[(m, next(iter(r.versions)))].model_info().max_model_len
                   for m, r in routes.models.items()}
        return ModelClusters(handles, owned, ModelRouter(routes, windows), overload_state_of)
    except BaseException:
        for handle, mine in results.values():
            if mine:
                handle.shutdown()
        raise


def load_tokenizers(backend: MultiBackend) -> dict[str, Any]:
    """Served name → Hugging Face tokenizer (one load per model folder)."""
    from transformers import AutoTokenizer

    by_path: dict[str, Any] = {}
    out = {}
    for info in backend.model_infos():
        if info.path not in by_path:
            by_path[info.path] = AutoTokenizer.from_pretrained(info.path)
        out[info.name] = by_path[info.path]
    return out
