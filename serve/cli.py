"""`aligngate` command line: serve the gateway, build the default models, and the training stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serve.app import create_app
    from serve.config import Settings, VersionSpec
    from serve.default_models import ensure_default_models
    from serve.logs import configure, get_logger

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "config": args.config}.items() if v is not None}
    settings = Settings(**overrides)
    configure(settings.log_level, settings.log_json)
    log = get_logger("aligngate")
    versions = list(settings.versions)
    if args.model:
        versions = [VersionSpec(name=Path(args.model).name or "model", model=args.model, weight=1.0)]
    if not versions:
        versions = ensure_default_models(settings.cache_dir)
        log.info("embedded_default", versions=[v.name for v in versions], cache_dir=str(settings.cache_dir))
    app = create_app(settings, versions)
    log.info("listening", url=f"http://{settings.host}:{settings.port}", public_model=settings.public_model)
    uvicorn.run(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    return 0


def _build_default(args: argparse.Namespace) -> int:
    from serve.config import Settings
    from serve.default_models import ensure_default_models

    settings = Settings()
    for v in ensure_default_models(Path(args.cache_dir) if args.cache_dir else settings.cache_dir):
        print(f"{v.name}\t{v.model}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngate", description="Serving gateway for RLHF-tuned policies.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway (embedded tiny default models when none are configured)",
                       description="Run the OpenAI-compatible gateway. Settings come from ALIGNGATE_* env vars "
                                   "and an optional YAML file; flags override both.")
    s.add_argument("--config", type=Path, help="YAML config file (also ALIGNGATE_CONFIG)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--model", help="serve one local HF model directory as the only version")
    s.set_defaults(func=_serve)

    b = sub.add_parser("build-default", help="build the tiny default models into the cache directory")
    b.add_argument("--cache-dir", help="default: $XDG_CACHE_HOME/aligngate or ~/.cache/aligngate")
    b.set_defaults(func=_build_default)

    from serve.admin_cli import add_subcommands

    add_subcommands(sub)  # canary ..., versions ...

    t = sub.add_parser("train", help="offline RLHF stages (see `aligngate train --help`)", add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=lambda a: _train(a.rest))
    return p


def _train(rest: list[str]) -> int:
    from training.cli import main as train_main

    return train_main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the training CLI parses its own arguments (and its own --help)
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
