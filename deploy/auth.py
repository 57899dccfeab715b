"""API keys → tenants, shared by the HTTP and gRPC fronts.

    keys = parse_api_keys("key1=tenantA,key2=tenantB")   # or keys_from_env() ($TANDEM_API_KEYS)
    auth = api_key_auth(keys)                             # Authenticate: metadata → tenant | None
    auth({"authorization": "Bearer key1"})  == "tenantA"

Contract: ``auth`` takes a mapping of lower-case header / metadata names to values and returns
the caller's tenant, or ``None`` (the front answers 401 / UNAUTHENTICATED). With no keys
configured every caller is the one open tenant ``OPEN_TENANT``. The tenant always comes from
the key, never from the request body.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from deploy.grpc_server import Authenticate, bearer_auth

OPEN_TENANT = "default"
ENV_VAR = "TANDEM_API_KEYS"


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
