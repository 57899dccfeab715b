"""Plain data that crosses the Ray boundary between the workers and their callers.

Sampling parameters travel as a plain ``dict`` (what a JSON request carries) and are validated
into ``engine.sampling.SamplingParams`` on arrival by ``sampling_params_from_dict``. Results are
frozen dataclasses holding data only (the ``TransferTicket`` is plain data too).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from engine.engine import StepRecord
from engine.sampling import SamplingParams
from kv_transfer.transport import TransferTicket

_FIELDS = frozenset(f.name for f in fields(SamplingParams))
_SEQUENCES = ("stop", "stop_token_ids")


def sampling_params_from_dict(params: dict[str, Any] | None) -> SamplingParams:
    """Validate a plain dict into ``SamplingParams``.

    Raises ``ValueError`` naming unknown keys, a non-dict, a bad sequence field, or (from
    ``SamplingParams`` itself) the first out-of-range value. ``None`` or ``{}`` gives the defaults.
    """
    if params is None:
        return SamplingParams()
    if not isinstance(params, dict):
        raise ValueError(f"sampling params must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown sampling params {unknown}; known: {sorted(_FIELDS)}")
    clean = dict(params)
    for key in _SEQUENCES:
        if key in clean:
            value = clean[key]
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} must be a list, got {value!r}")
            clean[key] = tuple(value)
    return SamplingParams(**clean)


@dataclass(frozen=True)
class PrefillResult:
    """One prefilled request. ``ticket`` is None when the request already finished (``finished``:
    max_tokens == 1, EOS or a stop) or when nothing is left to hand off. ``first_text`` is the
    text the first token released (may be "" mid-character or while a stop string is pending)."""

    request_id: str
    first_token: int
    finished: bool
    ticket: TransferTicket | None
    prefill_seconds: float
    num_cached_tokens: int
    first_text: str = ""
    finish_reason: str | None = None


@dataclass(frozen=True)
class PrefillItem:
    """One request of a ``prefill_batch`` call."""

    request_id: str
    prompt_ids: tuple[int, ...]
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class PrefillError:
    """A request of a batch the engine refused (bad params, prompt too long): nothing is held."""

    request_id: str
    message: str


@dataclass(frozen=True)
class PrefillBatch:
    """What one ``prefill_batch`` call did: one outcome per item (in order) and every engine step
    it ran with its shape and seconds (the controller calibrates the performance model on them)."""

    outcomes: tuple[PrefillResult | PrefillError, ...]
    steps: tuple[StepRecord, ...]
    seconds: float


@dataclass(frozen=True)
class PrefillStats:
    num_parked: int              # requests whose KV is offered and not yet released
    pending_transfers: int
    kv_usage: float              # fraction of blocks referenced (prefix-cached blocks excluded)
    num_free_blocks: int
    num_prefilled: int
    num_released: int
    bytes_offered: int
    kv_capacity_tokens: int      # blocks × block size
