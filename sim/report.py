"""Reports: a markdown table of capacities, and PNG plots (TTFT / TPOT CDFs; attainment vs rate)
when matplotlib is installed (it is optional: a clear error says how to get it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.errors import SimInputError


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SimInputError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def plots(result, out_dir: Path) -> list[Path]:
    """TTFT and TPOT CDFs of one run (stage 0 and all stages). Returns the files written."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, get in (("ttft", lambda r, k: r.ttft(k)), ("tpot", lambda r, k: r.tpot(k))):
        xs = sorted(v for r in result.engine.records for k in range(len(r.request.stages))
                    if (v := get(r, k)) is not None)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if xs:
            ax.plot(np.array(xs) * 1e3, np.arange(1, len(xs) + 1) / len(xs))
        ax.set_xlabel(f"{name.upper()} (ms)")
        ax.set_ylabel("CDF")
        ax.set_title(f"{result.spec.policy} / {result.spec.scenario}")
        path = out_dir / f"{name}_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def attainment_plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str) -> Path:
    """Attainment vs rate, one line per policy (points: (rate, attainment))."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for policy, pts in sorted(curves.items()):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("rate (req/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
