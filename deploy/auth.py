"""API keys → tenants, shared by the HTTP and gRPC fronts.

    keys = parse_api_keys("key1=tenantA,key2=tenantB")   # or keys_from_env() ($TANDEM_API_KEYS)
    auth = api_key_auth(keys)                             # Authenticate: metadata → tenant | None
    auth({"authorization": "Bearer key1"})  == "tenantA"

Contract: ``auth`` takes a mapping of lower-case header / metadata names to values and returns
the caller's tenant, or ``None`` (the front answers 401 / UNAUTHENTICATED). With no keys
configured every caller is the one open tenant ``OPEN_TENANT``. The tenant always comes from
the key, never from the request body.

Admin keys (``ServeConfig.admin_api_keys`` plus ``$TANDEM_ADMIN_KEYS``, ``"k1,k2"``) open the
admin routes (``deploy.admin_api``) and nothing else; they are never tenant keys::

    admin = admin_key_auth(admin_keys, tenant_keys)
    admin({"authorization": "Bearer k1"}) is Access.ADMIN      # TENANT: a tenant's key (403)
                                                                # NONE: no or an unknown key (401)

With no admin keys configured every caller is ``NONE``: the admin routes are closed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Collection, Mapping
from enum import Enum

from deploy.grpc_server import Authenticate, bearer_auth

OPEN_TENANT = "default"
ENV_VAR = "TANDEM_API_KEYS"
ADMIN_ENV_VAR = "TANDEM_ADMIN_KEYS"


def parse_api_keys(text: str) -> dict[str, str]:
    """``"key1=tenantA,key2=tenantB"`` → ``{"key1": "tenantA", ...}``; raises ``ValueError``
    naming the first malformed entry (no ``=``, empty key or tenant, a key given twice)."""
    keys: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        key, sep, tenant = (p.strip() for p in entry.partition("="))
        if not sep or not key or not tenant:
            raise ValueError(f"bad API key entry {entry!r}: expected key=tenant")
        if key in keys:
            raise ValueError(f"API key given twice: {key[:4]}...")
        keys[key] = tenant
    return keys


def keys_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    return parse_api_keys(environ.get(ENV_VAR, ""))


def api_key_auth(keys: Mapping[str, str]) -> Authenticate:
    """Bearer-key authentication over ``keys``; everyone is ``OPEN_TENANT`` when it is empty."""
    if not keys:
        return lambda metadata: OPEN_TENANT
    return bearer_auth(dict(keys))


class Access(str, Enum):
    """What a caller's key opens on the admin routes."""

    ADMIN = "admin"        # an admin key
    TENANT = "tenant"      # a tenant's API key: not an admin key (403)
    NONE = "none"          # no key, or an unknown one (401)


AdminAuthenticate = Callable[[Mapping[str, str]], Access]


def parse_admin_keys(text: str) -> list[str]:
    """``"k1, k2"`` → ``["k1", "k2"]`` (empty entries skipped); raises ``ValueError`` for a key
    given twice or one with whitespace or ``=`` in it (a tenant entry in the wrong variable)."""
    keys: list[str] = []
    for key in (e.strip() for e in text.split(",")):
        if not key:
            continue
        if "=" in key or any(c.isspace() for c in key):
            raise ValueError(f"bad admin key entry {key[:4]}...: expected plain keys, comma-separated")
        if key in keys:
            raise ValueError(f"admin key given twice: {key[:4]}...")
        keys.append(key)
    return keys


def admin_keys_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    return parse_admin_keys(environ.get(ADMIN_ENV_VAR, ""))


def admin_key_auth(admin_keys: Collection[str], tenant_keys: Mapping[str, str]) -> AdminAuthenticate:
    """``authorization: Bearer <key>`` → ``Access`` (see the module docstring). Keys are compared
    in constant time."""
    admins = [k.encode() for k in admin_keys]
    tenants = dict(tenant_keys)

    def authenticate(metadata: Mapping[str, str]) -> Access:
        scheme, _, key = metadata.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return Access.NONE
        if any(hmac.compare_digest(key.encode(), k) for k in admins):
            return Access.ADMIN
        return Access.TENANT if key in tenants else Access.NONE
    return authenticate
