"""The `bgsvc` command: serve, models fetch|list, remove, cluster up, keys, settings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from bgsvc.config import Settings, get_settings
from bgsvc.errors import NO_ONNXRUNTIME, BgsvcError, is_missing_onnxruntime
from bgsvc.options import RemovalOptions, parse_color, parse_format, parse_margin
from bgsvc.settings_reference import REFERENCE_COMMAND, env_names, settings_markdown

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from bgsvc.app import create_app
    from bgsvc.inference.loader import preflight
    from bgsvc.log import configure_logging
    from bgsvc.server import serve

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)
    preflight(settings)
    serve(create_app(settings), settings)
    return 0


def _models_fetch(args: argparse.Namespace, settings: Settings) -> int:
    import onnxruntime as ort

    from bgsvc.inference import prepare
    from bgsvc.inference.engine import model_file_for
    from bgsvc.inference.factory import prepared_file
    from bgsvc.inference.fetch import fetch
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.providers import CPU, choose_providers
    from bgsvc.inference.registry import resolve

    runtime = runtime_options(settings)
    providers = choose_providers(
        runtime.provider, ort.get_available_providers(), tensorrt=runtime.gpu.tensorrt
    )
    for name in args.names or settings.models:
        spec = resolve(name, settings)
        path, fetched = fetch(spec, settings.model_dir, force=args.force)
        print(f"{name}: {'fetched' if fetched else 'present'} at {path}")
        # The same derived file a worker would load (fp32 or int8 copy), made now so that
        # no worker pays for the conversion at start-up.
        key = prepare.source_key(path, spec.sha256)
        prepared = model_file_for(spec, path, key, runtime, providers)
        if prepared != path:
            print(f"{name}: prepared copy for {providers[0]} at {prepared}")
        if runtime.engine != "onnxruntime" and providers[0] == CPU and runtime.prepared_dir:
            # OpenVINO's input (machine-independent); its compiled blobs and precision
            # trials are made where it runs (BGSVC_OPENVINO_CACHE_DIR).
            pruned = prepared_file(spec, path, key, runtime.prepared_dir)
            print(f"{name}: prepared copy for OpenVINO at {pruned}")
    return 0


def _models_list(_: argparse.Namespace, settings: Settings) -> int:
    from bgsvc.inference.registry import known_models

    for name, spec in sorted(known_models(settings).items()):
        path = spec.file_in(settings.model_dir)
        flags = "present" if path.is_file() else "missing"
        if name == settings.default_model:
            flags += ", default"
        elif name in settings.models:
            flags += ", allowed"
        print(f"{name:24} {spec.source:6} {spec.license:32} {flags}")
    return 0


def _inputs(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from bgsvc.inference.loader import load_engines
    from bgsvc.pipeline import Remover

    model = args.model or settings.default_model
    settings = settings.model_copy(update={"models": [model], "default_model": model})
    options = RemovalOptions(
        format=parse_format(args.format),
        bg_color=parse_color(args.bg_color),
        channels=args.channels,
        crop=args.crop,
        crop_margin=parse_margin(args.crop_margin),
        model=model,
    )
    remover = Remover(dict(load_engines(settings)), settings)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    files = list(_inputs(args.inputs))
    for path in tqdm(files, unit="img", disable=args.quiet):
        try:
            result = remover.remove(path.read_bytes(), options)
        except (BgsvcError, OSError) as exc:
            failures += 1
            tqdm.write(f"{path}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            continue
        output = result.output
        (out_dir / f"{path.stem}.{output.format}").write_bytes(output.body)
    print(f"{len(files) - failures} written to {out_dir}, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def _cluster_up(args: argparse.Namespace, settings: Settings) -> int:
    from bgsvc.cluster import ClusterError, config_from_args, run_foreground

    run_dir = Path(args.run_dir)
    # A Redis or data directory the user named (BGSVC_REDIS_URL, BGSVC_DATA_DIR) reaches
    # the nodes with the rest of the environment; otherwise the fleet brings its own.
    own_redis = not settings.redis_url and not args.no_redis
    data_dir = None if "data_dir" in settings.model_fields_set else run_dir / "data"
    try:
        config = config_from_args(
            nodes=args.nodes,
            base_port=args.base_port,
            host=args.host,
            listen_port=args.listen_port,
            run_dir=run_dir,
            workers=args.workers,
            threads=args.threads,
            redis=own_redis,
            redis_port=args.redis_port,
            data_dir=data_dir,
            # A certificate in the settings turns HTTPS on by itself.
            tls=args.tls or settings.tls_cert is not None,
            tls_port=args.tls_port,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            edge_rate_per_s=settings.edge_rate_per_s,
            edge_burst=settings.edge_burst,
        )
        return run_foreground(config, ready_timeout=args.ready_timeout)
    except ClusterError as exc:
        print(f"bgsvc: error: {exc}", file=sys.stderr)
        return 2


def _settings(_: argparse.Namespace, settings: Settings) -> int:
    # JSON mode masks secrets and writes lists and objects as the JSON they are read from.
    values = settings.model_dump(mode="json")
    for name, field in Settings.model_fields.items():
        value = values[name]
        if isinstance(value, bool | list | dict):
            text = json.dumps(value)
        else:
            text = "" if value is None else str(value)
        print(f"{env_names(name, field)[0]}={text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="bgsvc", description="Background-removal service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service in the foreground")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_serve)

    models = sub.add_parser("models", help="fetch or list models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    fetch = models_sub.add_parser("fetch", help="fetch and verify models (default: allow-list)")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--force", action="store_true", help="fetch even if present")
    fetch.set_defaults(func=_models_fetch)
    listing = models_sub.add_parser("list", help="list known models and whether they are here")
    listing.set_defaults(func=_models_list)

    remove = sub.add_parser("remove", help="remove backgrounds of local files or folders")
    remove.add_argument("inputs", nargs="+", metavar="IN")
    remove.add_argument("-o", "--output", default="out", metavar="OUT_DIR")
    remove.add_argument("--format", default="png", choices=["png", "webp", "jpg", "auto", "zip"])
    remove.add_argument("--bg-color", default=None)
    remove.add_argument("--channels", default="rgba", choices=["rgba", "alpha"])
    remove.add_argument("--crop", action="store_true")
    remove.add_argument("--crop-margin", default=None)
    remove.add_argument("--model", default=None)
    remove.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    remove.set_defaults(func=_remove)
    cluster = sub.add_parser("cluster", help="a local fleet: N nodes behind nginx")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_sub.add_parser(
        "up",
        help="start N nodes and nginx on loopback, in the foreground until Ctrl-C/SIGTERM",
        description="Nodes are gunicorn (deploy/start.sh) on BASE_PORT.., named node-PORT "
        "(X-Served-By); nginx renders deploy/nginx/nginx.conf. Every BGSVC_* variable of "
        "this environment reaches the nodes. Unless BGSVC_REDIS_URL is set (or --no-redis), "
        "a redis-server on loopback (append-only, in RUN_DIR/redis) holds the job queue and "
        "the shared cache; nodes share BGSVC_DATA_DIR=RUN_DIR/data unless it is set. A node "
        "or redis-server that dies is started again; SIGHUP "
        "restarts every node in turn (a model or config reload).",
    )
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--base-port", type=int, default=8001, help="first node's port")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--listen-port", type=int, default=8080, help="nginx's port")
    up.add_argument("--workers", type=int, default=1, help="gunicorn workers per node")
    up.add_argument(
        "--threads", type=int, default=0, help="ORT threads per worker; 0: cores / all workers"
    )
    up.add_argument(
        "--run-dir", default=".cluster", help="logs/, nginx/, metrics/, redis/, data/ go here"
    )
    up.add_argument(
        "--no-redis", action="store_true", help="start no redis-server (jobs embedded per node)"
    )
    up.add_argument(
        "--redis-port", type=int, default=None, help="the fleet's redis-server port (default: free)"
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS (HTTP/2) at nginx on --tls-port, plain HTTP redirecting to it; with "
        "BGSVC_TLS_CERT/BGSVC_TLS_KEY, else a throwaway CA in RUN_DIR/tls (ca.pem for --cacert)",
    )
    up.add_argument("--tls-port", type=int, default=8443, help="nginx's HTTPS port")
    up.add_argument("--ready-timeout", type=float, default=300.0, metavar="SECONDS")
    up.set_defaults(func=_cluster_up)
    settings = sub.add_parser(
        "settings",
        help="print every setting's value here, or with --markdown the settings reference",
    )
    settings.add_argument(
        "--markdown",
        action="store_true",
        help=f"print docs/settings.md, made from the settings' own descriptions "
        f"({REFERENCE_COMMAND})",
    )
    settings.set_defaults(func=_settings)
    from bgsvc.auth.cli import add_parser as add_keys_parser

    add_keys_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; domain errors become one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    if args.command == "settings" and args.markdown:
        # The reference depends on the code alone, so this environment need not be valid.
        print(settings_markdown(), end="")
        return 0
    try:
        settings = get_settings()
    except ValidationError as exc:
        # A setting that makes the service unsafe or unusable (e.g. BGSVC_AUTH=required
        # without BGSVC_AUTH_PEPPER): one clear line per problem, nothing started.
        for error in exc.errors():
            print(f"bgsvc: error: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args, settings)
    except BgsvcError as exc:
        print(f"bgsvc: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if not is_missing_onnxruntime(exc):
            raise
        print(f"bgsvc: error: {NO_ONNXRUNTIME}", file=sys.stderr)
        return 2
    return code
