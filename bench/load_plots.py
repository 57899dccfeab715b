"""PNG plots of a load report (matplotlib, Agg backend):

    ttft_cdf.png     client-measured TTFT CDF, one line per lane (completed requests)
    tpot_cdf.png     mean-TPOT CDF per lane
    attainment.png   per lane: attainment (bars) and the rejected / failed shares (stacked)

``write_plots(doc, records, folder)`` returns the paths written; a lane without completed
requests gets no CDF line; attainment bars are skipped when no SLO was known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.load_record import RequestRecord, Status


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _cdf(plt, records: Sequence[RequestRecord], lanes: Sequence[str], attr: str, title: str,
         path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for lane in lanes:
        xs = sorted(getattr(r, attr) * 1e3 for r in records
                    if r.lane == lane and r.status is Status.OK and getattr(r, attr) is not None)
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                    label=f"{lane} (n={len(xs)})")
    ax.set_xlabel(f"{title} (ms, client-measured)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title(f"{title} CDF per lane")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _attainment(plt, doc: dict, path: Path) -> Path:
    groups = [*doc["lanes"].items(), ("all", doc["overall"])]
    names = [g for g, _ in groups]
    share = lambda s, k: (s[k] or 0) / s["requests"] if s["requests"] else 0.0  # noqa: E731
    met = [share(s, "slo_met") for _, s in groups]
    rej = [share(s, "rejected") for _, s in groups]
    fail = [share(s, "failed") for _, s in groups]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, met, color="tab:green", label="met SLO")
    ax.bar(names, rej, bottom=met, color="tab:orange", label="rejected")
    ax.bar(names, fail, bottom=[a + b for a, b in zip(met, rej)], color="tab:red", label="failed")
    for i, (_, s) in enumerate(groups):
        label = "no SLO" if s["attainment"] is None else f"{s['attainment']:.0%}"
        ax.text(i, min(met[i], 0.95) + 0.02, label, ha="center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of sent requests")
    ax.set_title("SLO attainment per lane")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(doc: dict, records: Sequence[RequestRecord], folder: str | Path) -> list[Path]:
    """Write the three PNGs into ``folder`` (created); return their paths."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lanes = list(doc["lanes"])
    return [_cdf(plt, records, lanes, "ttft_s", "TTFT", folder / "ttft_cdf.png"),
            _cdf(plt, records, lanes, "tpot_s", "TPOT", folder / "tpot_cdf.png"),
            _attainment(plt, doc, folder / "attainment.png")]
