"""The simulated cluster: worker counts, hardware, model, and what follows from them (the batch
time model, KV capacity per worker, KV transfer link, GPU-hour price).

    ClusterSpec(prefill=P, decode=D, colocated=K, hardware, model) ──build()──▶ Cluster
        workers: WorkerState per GPU (TP1), ids p0.. d0.. c0..
        perf:    PerfModel fitted on ../shared/profiles (router.profiles), margin 0: the "truth"
                 the simulated GPUs run at; the scheduler gets the same model (with its margin)
        kv:      kv_model.kv_capacity_tokens(model, GPU memory)
        link:    kv_model.Link (default 50 GB/s, 1 ms: a PCIe/NIC-class path between GPUs)

Llama-2-7B has no profile of its own: it uses the Llama-3-8B fit (same hidden size and layers)
with the decode-context coefficient scaled by its KV bytes per token (MHA: 4x Llama-3's GQA).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from router.kv_model import MODELS, Link, ModelShape, kv_capacity_tokens
from router.perf_model import AffinePiece, PerfModel, fit_and_report
from router.plan import WorkerRole, WorkerState
from router.profiles import load_points
from sim.errors import SimInputError

GPU_BYTES = {"h100": 80 * 2**30, "a100": 80 * 2**30}
# Documented defaults (USD per GPU-hour, on-demand cloud list prices of late 2024, rounded).
GPU_HOUR_USD = {"h100": 2.50, "a100": 1.50}
CONTEXT = {"llama3-8b": 8192, "llama2-7b": 4096}


@dataclass(frozen=True)
class ClusterSpec:
    """How many GPUs of each role. Either colocated only, or prefill and decode (disaggregated)."""

    prefill: int = 0
    decode: int = 0
    colocated: int = 0
    hardware: str = "h100"
    model: str = "llama3-8b"
    link_bytes_s: float = 50e9
    link_latency_s: float = 1e-3

    def __post_init__(self) -> None:
        if min(self.prefill, self.decode, self.colocated) < 0:
            raise SimInputError(f"worker counts must be >= 0: {self}")
        if self.prefill + self.decode + self.colocated == 0:
            raise SimInputError("the cluster has zero workers: give --prefill/--decode or --colocated")
        if (self.prefill > 0) != (self.decode > 0):
            raise SimInputError(f"a disaggregated cluster needs both prefill and decode workers, got "
                                f"--prefill {self.prefill} --decode {self.decode}")
        if self.colocated and self.prefill:
            raise SimInputError("mixing colocated and prefill/decode workers is not supported: "
                                "use either --colocated K or --prefill N --decode M")
        if self.hardware not in GPU_BYTES:
            raise SimInputError(f"unknown hardware {self.hardware!r}; expected one of {sorted(GPU_BYTES)}")
        if self.model not in MODELS:
            raise SimInputError(f"unknown model {self.model!r}; expected one of {sorted(MODELS)}")

    @property
    def gpus(self) -> int:
        return self.prefill + self.decode + self.colocated

    @property
    def disaggregated(self) -> bool:
        return self.prefill > 0


@dataclass(frozen=True)
class Cluster:
    spec: ClusterSpec
    shape: ModelShape
    perf: PerfModel
    suggested_margin: float
    kv_tokens: int
    link: Link
    workers: tuple[WorkerState, ...]

    @property
    def context_tokens(self) -> int:
        return CONTEXT[self.spec.model]

    def transfer_s(self, tokens: int) -> float:
        return self.link.transfer_s(self.shape, tokens)


@lru_cache(maxsize=4)
def fitted_model(hardware: str) -> tuple[PerfModel, float]:
    """The Llama-3-8B batch-time fit for `hardware` (margin 0) and its suggested safety margin."""
    pts = load_points(hardware)
    model, rep = fit_and_report(pts.x, pts.y)
    return model.with_margin(0.0), rep.suggested_margin


def _for_model(perf: PerfModel, shape: ModelShape) -> PerfModel:
    ratio = shape.kv_bytes_per_token / MODELS["llama3-8b"].kv_bytes_per_token
    if ratio == 1:
        return perf
    return PerfModel(tuple(AffinePiece(p.intercept, (p.coef[0], p.coef[1], p.coef[2] * ratio, p.coef[3],
                                                     p.coef[4])) for p in perf.pieces))


def build(spec: ClusterSpec) -> Cluster:
    shape = MODELS[spec.model]
    perf, margin = fitted_model(spec.hardware)
    kv = kv_capacity_tokens(shape, GPU_BYTES[spec.hardware])
    workers = tuple([WorkerState(f"p{i}", WorkerRole.PREFILL, kv) for i in range(spec.prefill)]
                    + [WorkerState(f"d{i}", WorkerRole.DECODE, kv) for i in range(spec.decode)]
                    + [WorkerState(f"c{i}", WorkerRole.COLOCATED, kv) for i in range(spec.colocated)])
    return Cluster(spec, shape, _for_model(perf, shape), margin, kv,
                   Link(spec.link_bytes_s, spec.link_latency_s), workers)
