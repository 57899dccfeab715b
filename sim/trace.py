"""Trace loading: replayed traces (Azure 2023, vidur, BurstGPT) and lengths-only files
(ShareGPT, BWB) with generated Poisson or gamma arrivals.

    file ──load_rows──▶ TraceRows (arrival s, input tokens, output tokens; sorted, from 0)
         ──arrivals────▶ rescaled to --rate / cut at --duration, or generated for lengths files
         ──clip────────▶ lengths clipped to the model context (counted, reported)

Contract: every function returns a new frozen `TraceRows`; bad input raises `SimInputError` with
a message naming the file and the problem (unknown format, missing columns, empty trace).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from sim.errors import SimInputError

FORMATS = ("azure", "vidur", "burstgpt", "lengths")
_COLUMNS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "vidur": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "lengths": (None, "num_prefill_tokens", "num_decode_tokens"),
}


@dataclass(frozen=True)
class TraceRows:
    """Requests as columns. `arrival_s` is None for lengths-only files (no times yet).
    `dropped`: rows removed at load (BurstGPT failures); `clipped`: rows shortened to the context."""

    source: str
    fmt: str
    arrival_s: np.ndarray | None
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    dropped: int = 0
    clipped: int = 0

    def __len__(self) -> int:
        return len(self.input_tokens)

    @property
    def native_rate(self) -> float | None:
        """(rows - 1) / span in requests per second, as in the traces README."""
        if self.arrival_s is None or len(self) < 2 or self.arrival_s[-1] <= self.arrival_s[0]:
            return None
        return (len(self) - 1) / float(self.arrival_s[-1] - self.arrival_s[0])


def detect_format(header: list[str]) -> str | None:
    for fmt, (t, i, o) in _COLUMNS.items():
        if (t is None or t in header) and i in header and o in header:
            return fmt
    return None


def _parse_azure_time(s: str) -> float:
    head, _, frac = s.partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_rows(path: str | Path, fmt: str | None = None) -> TraceRows:
    """Read a trace file. `fmt` None: detected from the header."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise SimInputError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise SimInputError(f"trace file not found: {path}")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SimInputError(f"trace {path} is empty (no header, no rows)")
        header = [h.strip() for h in header]
        got = detect_format(header) if fmt is None else fmt
        if got is None:
            raise SimInputError(
                f"cannot tell the format of {path} from its header {header}; pass --format "
                f"({', '.join(FORMATS)}) or use one of the column sets "
                + "; ".join(f"{k}: {[c for c in v if c]}" for k, v in _COLUMNS.items()))
        t_col, i_col, o_col = _COLUMNS[got]
        missing = [c for c in (t_col, i_col, o_col) if c is not None and c not in header]
        if missing:
            raise SimInputError(f"trace {path} is not in {got} format: missing columns {missing} "
                                f"(header {header})")
        ti = header.index(t_col) if t_col else None
        ii, oi = header.index(i_col), header.index(o_col)
        times, ins, outs = [], [], []
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                ins.append(int(float(row[ii])))
                outs.append(int(float(row[oi])))
                if ti is not None:
                    times.append(_parse_azure_time(row[ti]) if got == "azure" else float(row[ti]))
            except (ValueError, IndexError) as e:
                raise SimInputError(f"{path}:{n}: cannot read row {row!r} as {got}: {e}") from None
    if not ins:
        raise SimInputError(f"trace {path} has a header but no requests")
    inp, out = np.array(ins, dtype=np.int64), np.array(outs, dtype=np.int64)
    keep = (inp >= 1) & (out >= 1)
    arr = None
    if ti is not None:
        arr = np.array(times, dtype=float)
        order = np.argsort(arr, kind="stable")
        arr, inp, out, keep = arr[order], inp[order], out[order], keep[order]
    dropped = int((~keep).sum())
    if not keep.any():
        raise SimInputError(f"trace {path}: no request has >= 1 input and >= 1 output token")
    if arr is not None:
        arr = arr[keep] - arr[keep][0]
    return TraceRows(str(path), got, arr, inp[keep], out[keep], dropped=dropped)


def replay(rows: TraceRows, rate: float | None = None, duration_s: float | None = None) -> TraceRows:
    """Replayed arrivals: time-scaled so the mean rate is `rate` (None: as recorded), then cut to
    arrivals before `duration_s`."""
    if rows.arrival_s is None:
        raise SimInputError(f"{rows.source} has no arrival times; use arrivals() with a rate")
    arr = rows.arrival_s
    if rate is not None:
        if rate <= 0:
            raise SimInputError(f"--rate must be positive, got {rate}")
        native = rows.native_rate
        if native is None:
            raise SimInputError(f"{rows.source}: cannot rescale a trace with a zero time span")
        arr = arr * (native / rate)
    keep = np.ones(len(arr), dtype=bool) if duration_s is None else arr < duration_s
    if not keep.any():
        raise SimInputError(f"no request of {rows.source} arrives within --duration {duration_s}")
    return TraceRows(rows.source, rows.fmt, arr[keep], rows.input_tokens[keep], rows.output_tokens[keep],
                     rows.dropped, rows.clipped)


def arrivals(rows: TraceRows, rate: float, duration_s: float, seed: int = 0, cv: float = 1.0) -> TraceRows:
    """Generated arrivals at `rate` req/s for `duration_s` seconds: Poisson (cv = 1) or a gamma
    renewal process with coefficient of variation `cv` (> 1: bursty). Lengths are replayed in file
    order, cycling when the file runs out."""
    if rate <= 0 or duration_s <= 0 or cv <= 0:
        raise SimInputError(f"generated arrivals need positive --rate, --duration and cv; got "
                            f"{rate}, {duration_s}, {cv}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / (cv * cv)
    n_max = int(rate * duration_s * 1.5 + 10 * np.sqrt(rate * duration_s) + 16)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n_max)
    arr = np.cumsum(gaps) - gaps[0]
    arr = arr[arr < duration_s]
    idx = np.arange(len(arr)) % len(rows)
    return TraceRows(rows.source, rows.fmt, arr, rows.input_tokens[idx], rows.output_tokens[idx],
                     rows.dropped, rows.clipped)


def clip(rows: TraceRows, context_tokens: int) -> TraceRows:
    """Inputs clipped to context - 1, outputs to what is left of the context (>= 1)."""
    inp = np.minimum(rows.input_tokens, context_tokens - 1)
    out = np.maximum(1, np.minimum(rows.output_tokens, context_tokens - inp))
    n = int(((inp != rows.input_tokens) | (out != rows.output_tokens)).sum())
    return TraceRows(rows.source, rows.fmt, rows.arrival_s, inp, out, rows.dropped, rows.clipped + n)
