"""``ServeConfig``: what ``tandem serve`` / ``serve run deploy.serve_entry:app`` read (YAML or JSON).

    cluster:          a cluster.config.ClusterConfig (model, pools, SLO defaults...)
    http_host/port:   where Serve's HTTP proxy listens (127.0.0.1:8000)
    grpc_port:        the tandem.v1 gRPC server inside the ingress replica (127.0.0.1 only)
    api_keys:         {key: tenant}; empty → one open tenant "default" (plus $TANDEM_API_KEYS)
    admin_api_keys:   keys of the admin routes (/admin/models...: version weights, rollback),
                      never tenant keys; empty → the admin routes are closed (plus
                      $TANDEM_ADMIN_KEYS, "k1,k2")
    max_body_bytes:   larger HTTP bodies get 413
    default_max_tokens: output limit of a request that sets none (capped by the context window)
    controller_name:  the cluster controller's actor name; a replica attaches to it if it exists
    autoscale:        a deploy.autoscale_config.AutoscaleConfig (dry_run by default: decisions are
                      only logged and shown at GET /v1/autoscale; dry_run: false resizes the pools
                      through ClusterHandle.resize); null turns the autoscaler off
    autoscale_interval_s: one autoscaling decision per this many seconds
    models:           several served models instead of ``cluster`` (deploy.model_router): by
                      served name (the first is the default), each a ``ServedModel``: the
                      ModelRoute fields (versions name → weight, fallback, max_context, tags,
                      lanes) and ``clusters`` (version → ClusterConfig, one cluster per version).
                      Absent: the single ``cluster`` as before. See deploy/two_models.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.config import ClusterConfig
from deploy.autoscale_config import AutoscaleConfig
from deploy.model_router import ModelRoute, ModelRoutes


class ServedModel(ModelRoute):
    """One served model of a multi-model app: its routing fields and a cluster per version."""

    clusters: dict[str, ClusterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _a_cluster_per_version(self) -> "ServedModel":
        if list(self.clusters) != list(self.versions):
            raise ValueError(f"clusters must list exactly the versions {list(self.versions)} "
                             f"(in that order), got {list(self.clusters)}")
        return self


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterConfig = ClusterConfig()
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=1, le=65535)
    api_keys: dict[str, str] = Field(default_factory=dict)
    admin_api_keys: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    default_max_tokens: int = Field(256, ge=1)
    controller_name: str = Field("tandem-controller", min_length=1)
    ingress_num_cpus: float = Field(0.0, ge=0)
    autoscale: AutoscaleConfig | None = AutoscaleConfig()
    autoscale_interval_s: float = Field(10.0, gt=0)
    models: dict[str, ServedModel] | None = None
    tracing: str | None = None          # console | otlp | none; None: $OTEL_TRACES_EXPORTER (unset: off)

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ServeConfig":
        if self.http_port == self.grpc_port:
            raise ValueError("http_port and grpc_port must differ")
        if any(not k or not t for k, t in self.api_keys.items()):
            raise ValueError("api_keys: keys and tenants must be non-empty")
        if not all(self.admin_api_keys):
            raise ValueError("admin_api_keys: keys must be non-empty")
        if set(self.admin_api_keys) & set(self.api_keys):
            raise ValueError("a key cannot be both a tenant key (api_keys) and an admin key")
        if self.models is not None:
            if self.cluster != ClusterConfig():
                raise ValueError("set either cluster (one model) or models (several), not both")
            self.routes()
        return self

    def routes(self) -> ModelRoutes | None:
        """The router's config from ``models`` (None for a single-model app)."""
        if self.models is None:
            return None
        return ModelRoutes(models={n: ModelRoute(**m.model_dump(exclude={"clusters"}))
                                   for n, m in self.models.items()})


def load_serve_config(path: str | Path | None) -> ServeConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON file; ``None`` gives the defaults (the embedded
    default model on this machine). Raises ``FileNotFoundError`` / pydantic ``ValidationError``."""
    if path is None:
        return ServeConfig()
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    return ServeConfig.model_validate(data)
