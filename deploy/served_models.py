"""Which served model a front validates a request against: shared by the HTTP and gRPC fronts.

    info = model_for(backend, "small")     # ModelInfo, or raises UnknownModel (→ 404 / NOT_FOUND)
    infos = served_models(backend)         # every served model (``/v1/models``)

A ``deploy.multi_backend.MultiBackend`` answers through ``model_info_for`` / ``model_infos`` (its
served names; ``None`` is the default model); any other ``Backend`` serves one model, its
``model_info()``, under that model's name. The model a request is *validated* against is the one
it names; the one that *serves* it may differ (``cluster.api.Routed``).
"""

from __future__ import annotations

from cluster.backend import Backend, ModelInfo


class UnknownModel(LookupError):
    """The request names a model this server does not serve; ``message`` names the served ones."""

    def __init__(self, name: str | None, served: list[str]):
        self.message = (f"the model {name!r} does not exist; this server serves "
                        f"{', '.join(map(repr, served))}")
        super().__init__(self.message)


def served_models(backend: Backend) -> tuple[ModelInfo, ...]:
    infos = getattr(backend, "model_infos", None)
    return infos() if infos is not None else (backend.model_info(),)


def model_for(backend: Backend, name: str | None) -> ModelInfo:
    """The ``ModelInfo`` a request for ``name`` (None or "": the default) is checked against:
    its tokenizer's name, vocabulary and the largest context it can be served with."""
    name = name or None
    lookup = getattr(backend, "model_info_for", None)
    if lookup is not None:
        info = lookup(name)
    else:
        info = backend.model_info()
        info = info if name in (None, info.name) else None
    if info is None:
        raise UnknownModel(name, [i.name for i in served_models(backend)])
    return info
