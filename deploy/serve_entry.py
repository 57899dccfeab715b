"""Entry point for Ray Serve's CLI: the application described by ``$TANDEM_CONFIG``.

    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \\
           GLOO_SOCKET_IFNAME=lo PYTHONPATH=$PWD          # loopback Ray (shared/ENVIRONMENT.md)
    TANDEM_CONFIG=deploy/cpu_laptop.yaml serve run deploy.serve_entry:app

``$TANDEM_CONFIG`` is a ``deploy.config.ServeConfig`` file (YAML or JSON); unset, the defaults
(the embedded default model). ``serve run`` binds HTTP to 127.0.0.1:8000 by default; the gRPC
server listens on 127.0.0.1:``grpc_port``. API keys: the file's ``api_keys`` and
``$TANDEM_API_KEYS`` ("key1=tenantA,key2=tenantB"). ``tandem serve --config FILE`` does the
same and also honours ``http_host``/``http_port``.
"""

from __future__ import annotations

import os

from deploy.app import build_app
from deploy.config import load_serve_config

app = build_app(load_serve_config(os.environ.get("TANDEM_CONFIG") or None))
