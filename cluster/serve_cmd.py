"""``tandem serve [--config FILE] [--http-port N] [--grpc-port N]``: run the serving stack here.

Starts (or joins, with ``$RAY_ADDRESS`` / ``cluster.ray_address``) Ray on loopback, starts Serve's
HTTP proxy on ``http_host:http_port``, deploys ``deploy.app.build_app(config)`` (the ingress
builds the cluster and the gRPC server), prints where HTTP and gRPC listen, and serves until
Ctrl-C or SIGTERM; then it shuts Serve (and Ray, if it started it) down. Without ``--config``
it serves the embedded default model with the defaults of ``deploy.config.ServeConfig``.
"""

from __future__ import annotations

import signal
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API and the gRPC API on Ray Serve")
    p.add_argument("--config", help="ServeConfig YAML/JSON file (default: the embedded model, defaults)")
    p.add_argument("--http-port", type=int, help="override http_port")
    p.add_argument("--grpc-port", type=int, help="override grpc_port")


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args) -> int:
    from deploy.auth import keys_from_env
    from deploy.config import ServeConfig, load_serve_config

    cfg = load_serve_config(args.config)
    overrides = {k: v for k, v in (("http_port", args.http_port), ("grpc_port", args.grpc_port)) if v}
    cfg = ServeConfig.model_validate({**cfg.model_dump(), **overrides})
    keys = {**keys_from_env(), **cfg.api_keys}

    import ray
    from ray import serve

    from cluster.builder import connect_ray
    from deploy.app import deploy_app

    signal.signal(signal.SIGINT, _interrupt)     # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    started = connect_ray(cfg.cluster)
    try:
        serve.start(http_options={"host": cfg.http_host, "port": cfg.http_port})
        _eprint("[tandem] deploying (the ingress builds the cluster: loading the model can take a while)")
        deploy_app(cfg)
        print(f"[tandem] HTTP (OpenAI-compatible): http://{cfg.http_host}:{cfg.http_port}/v1", flush=True)
        print(f"[tandem] gRPC (tandem.v1.Tandem):  127.0.0.1:{cfg.grpc_port}", flush=True)
        if not keys:
            print("[tandem] no API keys configured: serving one open tenant", flush=True)
        else:
            print(f"[tandem] {len(keys)} API keys for {len(set(keys.values()))} tenants", flush=True)
        print("[tandem] Ctrl-C (or SIGTERM) to stop", flush=True)
        while True:                      # the one wait without a deadline: serve until Ctrl-C
            time.sleep(1.0)
    except KeyboardInterrupt:
        _eprint("[tandem] stopping")
        return 0
    except RuntimeError as exc:
        _eprint(f"tandem: error: {exc}")
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
