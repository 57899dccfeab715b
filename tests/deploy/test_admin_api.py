"""The admin HTTP routes (``deploy.admin_api``): version weights and rollback of a multi-model app,
behind admin keys that are not tenant keys; the keys' config and environment variable."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

httpx = pytest.importorskip("httpx")

from deploy.admin_api import mount_admin_routes  # noqa: E402
from deploy.auth import (Access, admin_key_auth, admin_keys_from_env, api_key_auth,  # noqa: E402
                         parse_admin_keys)
from deploy.config import ServeConfig  # noqa: E402
from deploy.metrics import ServingMetrics  # noqa: E402
from deploy.openai_api import make_app  # noqa: E402
from tests.deploy.test_served_model import multi  # noqa: E402
from tests.deploy.test_multi_backend import FakeBackend  # noqa: E402

TENANTS = {"tenant-key": "team-a"}
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.tiny_models import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def admin_app(backend, tokenizer, admin_keys=("admin-key",)):
    app = make_app(backend, tokenizer, ServingMetrics("main"), api_key_auth(TENANTS))
    mount_admin_routes(app, backend, admin_key_auth(admin_keys, TENANTS))
    return app


def call(app, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.request(method, path, headers=headers, **kwargs)
    return asyncio.run(asyncio.wait_for(main(), 30))


def test_get_models_lists_versions_weights_and_routed_requests(tokenizer):
    backend = multi()
    app = admin_app(backend, tokenizer)
    call(app, "POST", "/v1/completions", {"Authorization": "Bearer tenant-key"},
         json={"prompt": "hi", "model": "small", "max_tokens": 2})
    r = call(app, "GET", "/admin/models", ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] == "main" and list(body["models"]) == ["main", "small", "base"]
    assert body["models"]["main"] == {"stable": "v1", "weights": {"v1": 1.0, "v2": 0.0},
                                      "requests": {"v1": 0, "v2": 0}}
    assert body["models"]["small"]["requests"] == {"v1": 1}


def test_post_weights_changes_the_split_and_rollback_undoes_it(tokenizer):
    backend = multi()
    app = admin_app(backend, tokenizer)
    r = call(app, "POST", "/admin/models/main/weights", ADMIN, json={"v1": 0, "v2": 3})
    assert r.status_code == 200, r.text
    assert r.json()["weights"] == {"v1": 0.0, "v2": 3.0} and backend.router.weights("main")["v2"] == 3
    call(app, "POST", "/v1/completions", {"Authorization": "Bearer tenant-key"},
         json={"prompt": "hi", "max_tokens": 2})
    assert backend.counts == {("main", "v2"): 1}
    r = call(app, "POST", "/admin/models/main/rollback", ADMIN)
    assert r.status_code == 200 and r.json()["weights"] == {"v1": 1.0, "v2": 0.0}
    assert backend.router.weights("main") == {"v1": 1.0, "v2": 0.0}


@pytest.mark.parametrize("body, needle", [
    ({"v1": -1, "v2": 2}, "greater than or equal to 0"),
    ({"v1": 0, "v2": 0}, "positive"),
    ({"v1": 1, "v2": 1, "v9": 1}, "unknown versions ['v9']"),
    ({"v1": 1}, "missing ['v2']"),
    ({"v1": "1", "v2": 0}, "v1"),
    ([1, 2], "JSON object"),
    ({"v1": True, "v2": 0}, "v1"),
])
def test_bad_weights_are_a_400_with_a_message_and_change_nothing(tokenizer, body, needle):
    backend = multi()
    r = call(admin_app(backend, tokenizer), "POST", "/admin/models/main/weights", ADMIN, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert backend.router.weights("main") == {"v1": 1.0, "v2": 0.0}


def test_a_body_that_is_not_json_is_a_400(tokenizer):
    r = call(admin_app(multi(), tokenizer), "POST", "/admin/models/main/weights", ADMIN,
             content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_an_unknown_model_is_a_404(tokenizer):
    app = admin_app(multi(), tokenizer)
    for path in ("/admin/models/gpt-9/weights", "/admin/models/gpt-9/rollback"):
        r = call(app, "POST", path, ADMIN, json={"v1": 1})
        assert r.status_code == 404 and "main" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers, status", [
    (None, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "admin-key"}, 401),
    ({"Authorization": "Bearer tenant-key"}, 403),
])
def test_without_an_admin_key_every_admin_route_is_refused(tokenizer, headers, status):
    backend = multi()
    app = admin_app(backend, tokenizer)
    for method, path in (("GET", "/admin/models"), ("POST", "/admin/models/main/weights"),
                         ("POST", "/admin/models/main/rollback")):
        r = call(app, method, path, headers, json={"v1": 0, "v2": 1})
        assert r.status_code == status, (method, path, r.text)
        assert r.json()["error"]["type"] == ("permission_error" if status == 403 else "authentication_error")
    assert backend.router.weights("main") == {"v1": 1.0, "v2": 0.0}


def test_with_no_admin_keys_configured_the_admin_routes_are_closed(tokenizer):
    app = admin_app(multi(), tokenizer, admin_keys=())
    assert call(app, "GET", "/admin/models", ADMIN).status_code == 401


def test_a_single_model_app_has_no_versions_to_administer(tokenizer):
    r = call(admin_app(FakeBackend("solo"), tokenizer), "GET", "/admin/models", ADMIN)
    assert r.status_code == 404 and "models:" in r.json()["error"]["message"]


def test_admin_keys_from_text_env_and_config():
    assert parse_admin_keys(" a1, a2 ,") == ["a1", "a2"]
    for bad in ("a1,a1", "k=tenant", "a b"):
        with pytest.raises(ValueError):
            parse_admin_keys(bad)
    assert admin_keys_from_env({"TANDEM_ADMIN_KEYS": "x,y"}) == ["x", "y"]
    auth = admin_key_auth(["x"], {"t": "team"})
    assert [auth({"authorization": h}) for h in ("Bearer x", "Bearer t", "Bearer z", "")] == [
        Access.ADMIN, Access.TENANT, Access.NONE, Access.NONE]
    assert ServeConfig(admin_api_keys=["x"]).admin_api_keys == ["x"]
    with pytest.raises(ValidationError, match="both a tenant key"):
        ServeConfig(api_keys={"x": "team"}, admin_api_keys=["x"])
    with pytest.raises(ValidationError, match="non-empty"):
        ServeConfig(admin_api_keys=[""])


def test_build_app_merges_the_admin_keys_of_the_environment(monkeypatch):
    from deploy.app import build_app

    monkeypatch.setenv("TANDEM_ADMIN_KEYS", "env-admin")
    monkeypatch.setenv("TANDEM_API_KEYS", "env-key=env-tenant")
    app = build_app(ServeConfig(admin_api_keys=["cfg-admin"]))
    config = ServeConfig.model_validate(app._bound_deployment.init_args[0])
    assert config.admin_api_keys == ["cfg-admin", "env-admin"]
    assert config.api_keys == {"env-key": "env-tenant"}
    monkeypatch.setenv("TANDEM_ADMIN_KEYS", "env-key")
    with pytest.raises(ValidationError, match="both a tenant key"):
        build_app(ServeConfig())
