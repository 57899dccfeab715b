"""What a workload run produced, per lane: the demo's table, JSON and plot.

Each request's stream is reduced to one ``Outcome`` (client-side view); ``summarize`` turns the
outcomes into plain dicts (JSON-ready). A request meets its SLO only if it finished and every
stage met its TTFT and TPOT; rejected and failed requests count as misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cluster.api import Admitted, ErrorKind, Failed, Finished, StageDone


@dataclass
class Outcome:
    request_id: str
    lane: str
    admission: str = "pending"     # admitted | best_effort | rejected | failed
    finished: bool = False
    slo_met: bool = False
    error: str | None = None
    stages: list[StageDone] = field(default_factory=list)
    completion_tokens: int = 0
    retries: int = 0

    def add(self, item) -> None:
        if isinstance(item, Admitted):
            self.admission = item.admission
        elif isinstance(item, StageDone):
            self.stages.append(item)
        elif isinstance(item, Finished):
            self.finished, self.slo_met = True, item.slo_met
            self.completion_tokens, self.retries = item.completion_tokens, item.retries
        elif isinstance(item, Failed):
            self.error = f"{item.kind.value}: {item.message}"
            if item.kind is ErrorKind.REJECTED:
                self.admission = "rejected"


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(outcomes: list[Outcome], wall_s: float) -> dict:
    lanes = {}
    for lane in sorted({o.lane for o in outcomes}):
        mine = [o for o in outcomes if o.lane == lane]
        ttft = [s.ttft_s for o in mine for s in o.stages[:1]]
        tpot = [s.tpot_s for o in mine for s in o.stages if s.tpot_s is not None]
        lanes[lane] = {
            "requests": len(mine),
            "completed": sum(o.finished for o in mine),
            "attainment": sum(o.slo_met for o in mine) / len(mine),
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99),
            "tpot_p50": _pct(tpot, 50), "tpot_p99": _pct(tpot, 99),
            "admitted": sum(o.admission == "admitted" for o in mine),
            "best_effort": sum(o.admission == "best_effort" for o in mine),
            "rejected": sum(o.admission == "rejected" for o in mine),
            "failed": sum(not o.finished and o.admission != "rejected" for o in mine),
            "stage_attainment": _stage_attainment(mine),
        }
    met = sum(o.slo_met for o in outcomes)
    return {"requests": len(outcomes), "completed": sum(o.finished for o in outcomes),
            "failed": sum(not o.finished and o.admission != "rejected" for o in outcomes),
            "rejected": sum(o.admission == "rejected" for o in outcomes),
            "attainment": met / len(outcomes) if outcomes else 0.0,
            "goodput_rps": met / wall_s if wall_s > 0 else 0.0,
            "output_tokens": sum(o.completion_tokens for o in outcomes),
            "retries": sum(o.retries for o in outcomes), "wall_s": wall_s, "lanes": lanes}


def _stage_attainment(outcomes: list[Outcome]) -> dict[str, float]:
    by: dict[int, list[bool]] = {}
    for o in outcomes:
        for s in o.stages:
            by.setdefault(s.stage, []).append(s.slo_met)
    return {str(k): sum(v) / len(v) for k, v in sorted(by.items())}


def table(summary: dict) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1000:.0f}"
    head = ("lane", "requests", "SLO met", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "admitted", "best effort",
            "rejected", "failed")
    rows = [head]
    for lane, s in summary["lanes"].items():
        rows.append((lane, str(s["requests"]), f"{s['attainment']:.0%}", f"{ms(s['ttft_p50'])}/{ms(s['ttft_p99'])}",
                     f"{ms(s['tpot_p50'])}/{ms(s['tpot_p99'])}", str(s["admitted"]), str(s["best_effort"]),
                     str(s["rejected"]), str(s["failed"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def plot(outcomes: list[Outcome], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for lane in summary["lanes"]:
        ttft = sorted(s.ttft_s for o in outcomes if o.lane == lane for s in o.stages[:1])
        if ttft:
            a.step(ttft, np.arange(1, len(ttft) + 1) / len(ttft), where="post", label=lane)
    a.set_xlabel("TTFT (s)")
    a.set_ylabel("fraction of requests")
    a.set_title("time to first token")
    a.legend()
    names = list(summary["lanes"])
    b.bar(names, [summary["lanes"][n]["attainment"] for n in names])
    b.set_ylim(0, 1)
    b.set_title("SLO attainment by lane")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
