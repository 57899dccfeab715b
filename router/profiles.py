"""Batch-time points for a Llama-3-8B-class model composed from measured operator timings.

Sources (all under `../shared/profiles`, times in ms per op call per layer; see its README):
  * `aic_{h100,a100}_sxm_vllm0.14.0_gemm.csv` (ai-dynamo/aiconfigurator, bf16 rows): the QKV,
    O, gate+up, down and LM-head GEMMs at Llama-3-8B shapes. Shapes off the (n, k) grid are
    split into measured on-grid GEMMs (gate+up n=28672 = 16384 + 12288 columns; down k=14336 =
    12288 + 2048 rows; LM head n=128256 = 65536 + 3·16384 + 12288 + 1024 + 256 columns), which
    slightly over-counts launch overhead and never interpolates in n or k. Token counts between
    grid points of m are interpolated linearly.
  * `aic_{h100,a100}_sxm_vllm0.14.0_{context,generation}_attention.csv`: flash-attention prefill
    (batch, isl) and decode (batch, step) at 32 query / 8 KV heads, bf16 KV (Llama-3-8B at TP1).
  * `vidur_a100_Meta-Llama-3-8B_mlp.csv` and, on H100 where vidur has no Llama-3-8B profile,
    `vidur_h100_Llama-2-7b-hf_mlp.csv` (microsoft/vidur, medians): the element-wise ops (layer
    norms, RoPE, SiLU·mul, residual add, embedding) at hidden size 4096, which Llama-2-7B shares
    with Llama-3-8B. From the Llama-2-7B file two ops are rescaled to Llama-3 shapes, the only
    derived numbers here: SiLU·mul by 14336/11008 (MLP width) and RoPE by (32+8)/(32+32).

A batch's time is  emb + 32 × (element-wise + GEMMs + attention) + LM head, with attention
summed per sequence group. The points are (a) fresh prefill batches at the measured (batch, isl)
grid, (b) decode batches at the measured (batch, step) grid, and (c) mixed batches: one measured
prefill of isl tokens plus a measured decode batch. Total tokens are capped at 4096, the largest
token count vidur measured on H100.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.perf_model import attention_pairs

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "profiles"
LAYERS = 32
MAX_TOKENS = 4096
_GEMMS = {  # (n, k) pieces per Llama-3-8B projection, each measured on the grid
    "qkv": [(6144, 4096)],
    "o": [(4096, 4096)],
    "gate_up": [(16384, 4096), (12288, 4096)],
    "down": [(4096, 12288), (4096, 2048)],
}
_LM_HEAD = [(65536, 4096)] + [(16384, 4096)] * 3 + [(12288, 4096), (1024, 4096), (256, 4096)]
_ELEMENTWISE = {"input_layernorm": 1.0, "post_attention_layernorm": 1.0, "attn_rope": 40 / 64,
                "mlp_act": 14336 / 11008, "add": 2.0}  # two residual adds per layer


@dataclass(frozen=True)
class ProfilePoints:
    """Features (n × 5, see perf_model.FEATURES) and batch times in seconds, with a kind label."""

    x: np.ndarray
    y: np.ndarray
    kind: tuple[str, ...]
    hardware: str


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"profile file missing: {path} (see ../shared/profiles/README.md)")
    with path.open() as f:
        return list(csv.DictReader(f))


class _Tables:
    def __init__(self, root: Path, hw: str) -> None:
        gemm: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for r in _rows(root / f"aic_{hw}_sxm_vllm0.14.0_gemm.csv"):
            if r["gemm_dtype"] == "bfloat16":
                gemm.setdefault((int(r["n"]), int(r["k"])), []).append((int(r["m"]), float(r["latency"])))
        self.gemm = {key: (np.array([m for m, _ in sorted(v)], float), np.array([t for _, t in sorted(v)]))
                     for key, v in gemm.items()}
        self.ctx = {(int(r["batch_size"]), int(r["isl"])): float(r["latency"])
                    for r in _rows(root / f"aic_{hw}_sxm_vllm0.14.0_context_attention.csv")
                    if (r["num_heads"], r["num_key_value_heads"], r["kv_cache_dtype"]) == ("32", "8", "bfloat16")}
        self.gen = {(int(r["batch_size"]), int(r["step"])): float(r["latency"])
                    for r in _rows(root / f"aic_{hw}_sxm_vllm0.14.0_generation_attention.csv")
                    if (r["num_heads"], r["num_key_value_heads"], r["kv_cache_dtype"]) == ("32", "8", "bfloat16")}
        per_tokens: dict[int, list[float]] = {}
        emb: dict[int, list[float]] = {}
        llama3 = root / f"vidur_{hw}_Meta-Llama-3-8B_mlp.csv"     # measured shapes where they exist
        weights = {op: (2.0 if op == "add" else 1.0) for op in _ELEMENTWISE} if llama3.exists() else _ELEMENTWISE
        for r in _rows(llama3 if llama3.exists() else root / f"vidur_{hw}_Llama-2-7b-hf_mlp.csv"):
            if r["num_tensor_parallel_workers"] != "1":
                continue
            n = int(r["num_tokens"])
            per_tokens.setdefault(n, []).append(
                sum(w * float(r[f"time_stats.{op}.median"]) for op, w in weights.items()))
            emb.setdefault(n, []).append(float(r["time_stats.emb.median"]))
        ns = sorted(per_tokens)
        self.ew = (np.array(ns, float), np.array([np.mean(per_tokens[n]) for n in ns]))
        self.emb = (np.array(ns, float), np.array([np.mean(emb[n]) for n in ns]))

    def gemm_ms(self, pieces: list[tuple[int, int]], m: int) -> float:
        return sum(float(np.interp(m, *self.gemm[nk])) for nk in pieces)

    def dense_ms(self, tokens: int, seqs: int) -> float:
        """Everything but attention for a batch of `tokens` tokens and `seqs` sampled sequences."""
        layer = sum(self.gemm_ms(p, tokens) for p in _GEMMS.values()) + float(np.interp(tokens, *self.ew))
        return LAYERS * layer + float(np.interp(tokens, *self.emb)) + self.gemm_ms(_LM_HEAD, seqs)


def load_points(hardware: str = "h100", root: Path | str | None = None) -> ProfilePoints:
    """Composed Llama-3-8B batch times on `hardware` ("h100" or "a100"); see the module docstring.

    With no `root`: composed from `../shared/profiles` when it is there, else read from the
    points shipped in `router/data/` (the same composition, written by `write_shipped_points`),
    so the planner works on machines without the shared profiles.
    """
    if hardware not in ("h100", "a100"):
        raise ValueError(f"hardware must be 'h100' or 'a100', got {hardware!r}")
    if root is None and not DEFAULT_DIR.exists():
        return _read_shipped(hardware)
    t = _Tables(Path(root) if root is not None else DEFAULT_DIR, hardware)
    xs: list[list[float]] = []
    ys: list[float] = []
    kinds: list[str] = []

    def add(kind: str, p: int, d: int, ctx: int, pairs: int, s: int, ms: float) -> None:
        xs.append([p, d, ctx, pairs, s])
        ys.append(ms / 1000.0)
        kinds.append(kind)

    for (b, isl), lat in sorted(t.ctx.items()):
        if b * isl <= MAX_TOKENS:
            add("prefill", b * isl, 0, 0, b * attention_pairs(isl, 0), b,
                t.dense_ms(b * isl, b) + LAYERS * lat)
    for (b, step), lat in sorted(t.gen.items()):
        if b <= MAX_TOKENS:
            add("decode", 0, b, b * (step + 1), 0, b, t.dense_ms(b, b) + LAYERS * lat)
    for (b, step), dlat in sorted(t.gen.items()):
        for isl in (128, 512, 1024, 2048):
            plat = t.ctx.get((1, isl))
            if plat is not None and b + isl <= MAX_TOKENS and b <= 256 and step <= 8191:
                add("mixed", isl, b, b * (step + 1), attention_pairs(isl, 0), b + 1,
                    t.dense_ms(isl + b, b + 1) + LAYERS * (plat + dlat))
    return ProfilePoints(np.array(xs, float), np.array(ys), tuple(kinds), hardware)


SHIPPED_DIR = Path(__file__).resolve().parent / "data"
_COLUMNS = ("prefill_tokens", "decode_tokens", "decode_context", "prefill_pairs", "num_seqs", "seconds", "kind")


def _shipped_path(hardware: str) -> Path:
    return SHIPPED_DIR / f"llama3_8b_{hardware}_batch_times.csv"


def _read_shipped(hardware: str) -> ProfilePoints:
    rows = _rows(_shipped_path(hardware))
    x = np.array([[float(r[c]) for c in _COLUMNS[:5]] for r in rows])
    return ProfilePoints(x, np.array([float(r["seconds"]) for r in rows]), tuple(r["kind"] for r in rows), hardware)


def write_shipped_points(root: Path | str = DEFAULT_DIR) -> None:
    """Regenerate `router/data/llama3_8b_{h100,a100}_batch_times.csv` from the shared profiles."""
    SHIPPED_DIR.mkdir(exist_ok=True)
    for hw in ("h100", "a100"):
        pts = load_points(hw, root)
        with _shipped_path(hw).open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(_COLUMNS)
            for xs, y, kind in zip(pts.x, pts.y, pts.kind):
                out.writerow([int(v) for v in xs] + [repr(float(y)), kind])


def main() -> None:
    """`python -m router.profiles`: the fit report per hardware as JSON lines (for BENCHMARKS.md)."""
    import json

    from router.perf_model import fit_and_report
    for hw in ("h100", "a100"):
        pts = load_points(hw)
        model, rep = fit_and_report(pts.x, pts.y)
        print(json.dumps({"hardware": hw, "model": "llama3-8b", "points": len(pts.y), **rep.as_dict()}))


if __name__ == "__main__":
    main()
