"""The cluster's configuration: one pydantic model the builder turns into actors.

Validated at the edge (a YAML/JSON file, CLI flags, Python); everything downstream gets plain
values. ``model=None`` means the embedded default model (``tandem model path``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.config import SchedulerConfig
from router.slo import Scenario

MAX_POOL_WORKERS = 256          # the most workers one pool may have (at build time and by resize)


class WorkerResources(BaseModel):
    """What one worker actor asks Ray for. On a CPU machine ``num_gpus`` stays 0."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, le=8)
    threads: int | None = Field(None, ge=1)   # torch intra-op threads (Ray sets OMP_NUM_THREADS=1)


class ClusterConfig(BaseModel):
    """Pools, model, transports, SLO defaults and the controller's deadlines.

    Deadlines (every wait has one): ``prefill_timeout_s`` per prefill call, ``step_timeout_s``
    per decode step, ``ready_timeout_s`` for a worker to load (at build time and when a resize
    adds one), ``request_timeout_s`` end to end, ``drain_timeout_s`` for a worker that a resize
    removes to finish its requests (past it they are prefilled again on the workers that stay).
    ``max_retries``: re-prefills of one request after a worker death or a failed transfer.
    ``policy``: ``slo`` runs the SLOs-Serve scheduler; ``fcfs`` admits everything in arrival
    order (the baseline, best effort for all).
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    served_model_name: str | None = None
    prefill_workers: int = Field(1, ge=1, le=MAX_POOL_WORKERS)
    decode_workers: int = Field(1, ge=1, le=MAX_POOL_WORKERS)
    colocated_workers: int = Field(0, ge=0, le=MAX_POOL_WORKERS)   # > 0: no prefill/decode split (the baseline)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    kernels: Literal["auto", "torch", "triton"] = "auto"
    prefill_resources: WorkerResources = WorkerResources()
    decode_resources: WorkerResources = WorkerResources()
    colocated_resources: WorkerResources = WorkerResources()
    num_blocks: int | None = Field(None, ge=16)
    block_size: int = Field(16, ge=1)
    max_num_batched_tokens: int = Field(2048, ge=16)
    max_num_seqs: int = Field(64, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.45, gt=0, le=0.95)
    transport: Literal["auto", "cpu_shm", "cpu_ray", "cpu_gloo", "cuda_ipc", "nccl"] = "auto"
    policy: Literal["slo", "fcfs"] = "slo"
    scenario: Scenario = Scenario.CHATBOT
    slo_scale: float = Field(1.0, gt=0)       # multiplies preset TPOTs (CPU clusters are slower)
    min_ttft_s: float = Field(0.25, ge=0)     # floor of a relative TTFT SLO (queueing + RPC overhead)
    scheduler: SchedulerConfig = SchedulerConfig()
    calibration_steps: int = Field(48, ge=0)  # 0: no startup calibration (online refits only)
    refit_every: int = Field(64, ge=8)        # refit the performance model every N new steps
    plan_interval_s: float = Field(0.02, gt=0, le=1)
    prefill_batch_tokens: int = Field(2048, ge=16)
    prefill_timeout_s: float = Field(120.0, gt=0)
    step_timeout_s: float = Field(60.0, gt=0)
    handoff_deadline_s: float = Field(30.0, gt=0)
    pull_deadline_s: float = Field(10.0, gt=0)
    ready_timeout_s: float = Field(300.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    health_interval_s: float = Field(1.0, gt=0)
    drain_timeout_s: float = Field(60.0, ge=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_restarts: int = Field(3, ge=0)
    session_affinity: bool = True
    local_prefill_fraction: float = Field(0.5, gt=0, le=1)  # cached share that skips the prefill pool
    ray_address: str | None = None            # None: $RAY_ADDRESS, else start a local cluster

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterConfig":
        gpu = self.prefill_resources.num_gpus > 0 or self.decode_resources.num_gpus > 0
        if self.device == "cpu" and gpu:
            raise ValueError("device is cpu but a pool asks for GPUs")
        if self.transport in ("cuda_ipc", "nccl") and self.device == "cpu":
            raise ValueError(f"transport {self.transport} needs device cuda")
        if self.prefill_batch_tokens > self.max_num_batched_tokens * 64:
            raise ValueError("prefill_batch_tokens is more than 64 engine steps' worth of tokens")
        return self
