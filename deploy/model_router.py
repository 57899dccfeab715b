"""Which served model and version takes a request: pure policy, no Ray, no I/O.

    router = ModelRouter(ModelRoutes.model_validate({"models": {...}}), windows={"main": 4096, ...})
    choice = router.route("main", Lane.BACKGROUND, needs_tokens=900, overload_state_of=states.get,
                          key=request_id)        # RouteChoice("small", "v1", RouteReason.FALLBACK)
    router.set_weights("main", {"v1": 50, "v2-canary": 50})
    router.rollback("main")                      # every version but the first gets weight 0

The rule, in order (each step may change the model; ``reason`` names the last step that did)::

    model = requested or the default (the first configured)       unknown name → RouteError 404
    lane rule:   routes[model].lanes[lane] exists → that model            (priority routing)
    capability:  needs_tokens > context(model) or needs ⊄ tags(model)      (needs: e.g. {"chat"}
                 → the first model, in config order, that fits             for chat completions)
                                                                           none fits → RouteError 400
    fallback ladder: while lane is not interactive and overload_state_of(model) != "normal"
                 and model has a fallback that fits (and was not visited) → model = fallback
    version:     weighted choice among the model's versions (weight > 0), by a hash of ``key``
                 (deterministic: the same request id always takes the same version), else a
                 seeded RNG

Interactive traffic never moves down the ladder: it keeps its model and lets that model's own
admission (best effort, Retry-After) handle the overload. The stable version of a model is the
first one listed; ``rollback`` keeps its weight and zeroes the rest in one step.

Substitutes (fallbacks, lane targets, models a long request overflows to) receive the token ids
the requested model's tokenizer produced, so they must share its tokenizer
(``deploy.multi_cluster`` checks the vocabulary sizes of fallbacks and lane targets at startup).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.api import ErrorKind
from router.request import Lane

NORMAL = "normal"
CHAT = "chat"          # the tag of a model that serves /v1/chat/completions


class ModelRoute(BaseModel):
    """One served model: its versions (name → weight; the first is the stable one), an optional
    ``fallback`` model for overload, capabilities (``max_context`` tokens, prompt + output; None:
    the model's own window; ``tags`` such as "chat") and lane rules (lane → model)."""

    model_config = ConfigDict(extra="forbid")

    versions: dict[str, float] = Field(default_factory=lambda: {"v1": 100.0}, min_length=1)
    fallback: str | None = None
    max_context: int | None = Field(None, ge=16)
    tags: frozenset[str] = frozenset()
    lanes: dict[Lane, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights(self) -> "ModelRoute":
        check_weights(self.versions, self.versions)
        return self


class ModelRoutes(BaseModel):
    """Every served model by name; the first is the default (a request that names none)."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelRoute] = Field(min_length=1)

    @model_validator(mode="after")
    def _targets_exist(self) -> "ModelRoutes":
        for name, route in self.models.items():
            if route.fallback is not None and route.fallback not in self.models:
                raise ValueError(f"models.{name}.fallback: no model {route.fallback!r}")
            if route.fallback == name:
                raise ValueError(f"models.{name}.fallback: a model cannot fall back to itself")
            for lane, target in route.lanes.items():
                if target not in self.models:
                    raise ValueError(f"models.{name}.lanes.{lane.value}: no model {target!r}")
        return self

    @property
    def default(self) -> str:
        return next(iter(self.models))


def check_weights(weights: Mapping[str, float], versions: Mapping[str, float]) -> None:
    """Raise ``ValueError`` unless ``weights`` names exactly ``versions``, none is negative and
    they do not sum to zero."""
    unknown = [v for v in weights if v not in versions]
    if unknown:
        raise ValueError(f"unknown versions {unknown}; the versions are {list(versions)}")
    missing = [v for v in versions if v not in weights]
    if missing:
        raise ValueError(f"weights must name every version {list(versions)}; missing {missing}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("version weights must be >= 0")
    if sum(weights.values()) <= 0:
        raise ValueError("at least one version needs a positive weight")


class RouteReason(str, Enum):
    REQUESTED = "requested"      # the model asked for (or the default)
    LANE = "lane"                # a lane rule moved it
    CAPABILITY = "capability"    # the requested model cannot take it (context, tags)
    FALLBACK = "fallback"        # the overload ladder moved it to a smaller model


@dataclass(frozen=True)
class RouteChoice:
    model: str
    version: str
    reason: RouteReason


class RouteError(Exception):
    """No model can take the request; ``kind`` is NOT_FOUND (unknown name) or INVALID (too long,
    missing capability)."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class ModelRouter:
    """Routes requests by ``ModelRoutes``; holds the live version weights (``set_weights``,
    ``rollback``). ``windows`` are the served models' context windows (tokens), which cap
    ``max_context``."""

    def __init__(self, routes: ModelRoutes, windows: Mapping[str, int] | None = None, seed: int = 0):
        self.routes = routes
        self._weights = {m: dict(r.versions) for m, r in routes.models.items()}
        self._windows = dict(windows or {})
        self._rng = random.Random(seed)

    # ── queries ────────────────────────────────────────────────────────────────────────────
    @property
    def default(self) -> str:
        return self.routes.default

    def weights(self, model: str) -> dict[str, float]:
        return dict(self._weights[model])

    def context(self, model: str) -> int | None:
        """Largest prompt + output this model takes (None: unbounded as far as routing knows)."""
        limits = [x for x in (self.routes.models[model].max_context, self._windows.get(model)) if x]
        return min(limits) if limits else None

    def reachable_context(self, model: str) -> int | None:
        """The largest context a request for ``model`` can be served with (capability routing may
        move it to any model that fits); None if some model is unbounded."""
        limits = [self.context(model), *(self.context(m) for m in self.routes.models)]
        return None if any(c is None for c in limits) else max(limits)

    def fits(self, model: str, needs_tokens: int, needs: frozenset[str] = frozenset()) -> bool:
        limit = self.context(model)
        return (limit is None or needs_tokens <= limit) and needs <= self.routes.models[model].tags

    # ── the rule ───────────────────────────────────────────────────────────────────────────
    def route(self, model_requested: str | None, lane: Lane, needs_tokens: int,
              overload_state_of: Callable[[str], str], key: str | None = None,
              needs: frozenset[str] = frozenset()) -> RouteChoice:
        """The model and version for one request (the rule in the module docstring). ``key`` (the
        request id) makes the version choice deterministic. Raises ``RouteError``."""
        models = self.routes.models
        model = self.default if model_requested is None else model_requested
        if model not in models:
            raise RouteError(ErrorKind.NOT_FOUND,
                             f"the model {model!r} does not exist; served: {', '.join(models)}")
        reason = RouteReason.REQUESTED
        target = models[model].lanes.get(Lane(lane))
        if target is not None and target != model:
            model, reason = target, RouteReason.LANE
        if not self.fits(model, needs_tokens, needs):
            model, reason = self._first_fitting(model, needs_tokens, needs), RouteReason.CAPABILITY
        if Lane(lane) is not Lane.INTERACTIVE:
            seen = {model}
            while overload_state_of(model) != NORMAL:
                fallback = models[model].fallback
                if fallback is None or fallback in seen or not self.fits(fallback, needs_tokens, needs):
                    break
                model, reason = fallback, RouteReason.FALLBACK
                seen.add(model)
        return RouteChoice(model, self._version(model, key), reason)

    def _first_fitting(self, model: str, needs_tokens: int, needs: frozenset[str]) -> str:
        for name in self.routes.models:
            if self.fits(name, needs_tokens, needs):
                return name
        limit = self.reachable_context(model)
        missing = needs - frozenset().union(*(r.tags for r in self.routes.models.values()))
        why = (f"no served model has the capabilities {sorted(missing)} (a model declares them "
               f"in its tags)" if missing else
               f"the request needs {needs_tokens} tokens (prompt + output); the largest context is {limit}")
        raise RouteError(ErrorKind.INVALID, why)

    def _version(self, model: str, key: str | None) -> str:
        weights = self._weights[model]
        if key is None:
            u = self._rng.random()
        else:
            digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
            u = int.from_bytes(digest[:8], "big") / 2**64
        point, total = u * sum(weights.values()), 0.0
        chosen = next(v for v, w in weights.items() if w > 0)
        for version, weight in weights.items():
            if weight <= 0:
                continue
            total += weight
            chosen = version
            if point < total:
                break
        return chosen

    # ── changes ────────────────────────────────────────────────────────────────────────────
    def set_weights(self, model: str, weights: Mapping[str, float]) -> None:
        """Replace ``model``'s version weights (all of its versions, >= 0, positive sum); raises
        ``KeyError`` for an unknown model, ``ValueError`` for bad weights (nothing changes)."""
        current = self._weights[model]
        check_weights(weights, current)
        self._weights[model] = {v: float(weights[v]) for v in current}

    def rollback(self, model: str) -> dict[str, float]:
        """One step back to the stable (first) version: every other version's weight becomes 0.
        Returns the new weights. The stable version keeps its weight (1 if it had none)."""
        current = self._weights[model]
        stable = next(iter(current))
        self._weights[model] = {v: (current[v] or 1.0) if v == stable else 0.0 for v in current}
        return self.weights(model)
