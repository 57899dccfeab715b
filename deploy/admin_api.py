"""Admin HTTP routes: the version weights of a multi-model app and their rollback.

    app = make_app(backend, ...)                           # deploy.openai_api
    mount_admin_routes(app, backend, admin_key_auth(admin_keys, tenant_keys))

Routes (``Authorization: Bearer <admin key>``; deploy.auth)::

    GET  /admin/models                   every served model: its versions' weights, the stable
                                         (first) version, requests routed to each version so far
    POST /admin/models/{name}/weights    body {version: weight, ...}: every version of the model,
                                         finite and >= 0, at least one > 0 → the new weights
    POST /admin/models/{name}/rollback   every version but the stable one gets weight 0

Errors have the OpenAI shape of the rest of the front: no key or an unknown one → 401, a
tenant's key → 403, a bad body → 400 naming the problem, an unknown model → 404. A single-model
app (no ``models:`` section: no router, no versions) answers 404 on every admin route.

The weights live in the ingress replica's ``deploy.model_router.ModelRouter`` (memory): a change
applies from the next request on, and a restarted replica starts from the config's weights.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter, ValidationError

from cluster.api import ErrorKind
from deploy.auth import Access, AdminAuthenticate
from deploy.model_router import ModelRouter
from deploy.openai_api import ApiError
from deploy.openai_schema import validation_message

log = logging.getLogger("ray.serve")
Weights = TypeAdapter(dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]])


class AdminFront:
    """The admin handlers over a ``MultiBackend`` (its ``router`` and ``counts``), or over a
    single-model backend (no router: 404)."""

    def __init__(self, backend, authenticate: AdminAuthenticate):
        self.backend, self.authenticate = backend, authenticate

    def check(self, request: Request) -> None:
        access = self.authenticate({"authorization": request.headers.get("authorization", "")})
        if access is Access.NONE:
            raise ApiError(401, ErrorKind.UNAUTHENTICATED,
                           "missing or unknown admin key (header 'Authorization: Bearer <admin key>')")
        if access is Access.TENANT:
            raise ApiError(403, ErrorKind.FORBIDDEN,
                           "this API key is a tenant key, not an admin key")

    def router(self) -> ModelRouter:
        router = getattr(self.backend, "router", None)
        if not isinstance(router, ModelRouter):
            raise ApiError(404, ErrorKind.NOT_FOUND, "this app serves one model without versions; "
                           "version weights need a models: section (see deploy/two_models.yaml)")
        return router

    def model(self, name: str) -> ModelRouter:
        router = self.router()
        if name not in router.routes.models:
            raise ApiError(404, ErrorKind.NOT_FOUND, f"no model {name!r}; served: "
                           f"{', '.join(router.routes.models)}")
        return router

    def describe(self, router: ModelRouter, name: str) -> dict:
        counts = getattr(self.backend, "counts", {})
        weights = router.weights(name)
        return {"stable": next(iter(weights)), "weights": weights,
                "requests": {v: counts.get((name, v), 0) for v in weights}}

    def models(self, request: Request) -> JSONResponse:
        self.check(request)
        router = self.router()
        return JSONResponse({"default": router.default,
                             "models": {m: self.describe(router, m) for m in router.routes.models}})

    async def set_weights(self, request: Request, name: str) -> JSONResponse:
        self.check(request)
        router = self.model(name)
        data = await request.app.state.front.json_body(request)
        try:
            weights = Weights.validate_python(data)
            router.set_weights(name, weights)
        except ValidationError as exc:
            raise ApiError(400, ErrorKind.INVALID, "weights: " + validation_message(exc)) from None
        except ValueError as exc:
            raise ApiError(400, ErrorKind.INVALID, f"weights: {exc}") from None
        log.info("admin: the weights of %s are now %s", name, router.weights(name))
        return JSONResponse({"model": name, **self.describe(router, name)})

    def rollback(self, request: Request, name: str) -> JSONResponse:
        self.check(request)
        router = self.model(name)
        weights = router.rollback(name)
        log.info("admin: %s rolled back to its stable version: %s", name, weights)
        return JSONResponse({"model": name, **self.describe(router, name)})


def mount_admin_routes(app: FastAPI, backend, authenticate: AdminAuthenticate) -> None:
    """Add the admin routes to ``app`` (one made by ``deploy.openai_api.make_app``: its error
    handler and body reader are used)."""
    admin = AdminFront(backend, authenticate)

    @app.get("/admin/models")
    async def admin_models(request: Request):
        return admin.models(request)

    @app.post("/admin/models/{name}/weights")
    async def admin_weights(request: Request, name: str):
        return await admin.set_weights(request, name)

    @app.post("/admin/models/{name}/rollback")
    async def admin_rollback(request: Request, name: str):
        return admin.rollback(request, name)
