"""`aligngate` command line: serve the gateway, build the default models, and the training stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serve.api.app import create_app
    from serve.config import Settings, VersionSpec
    from serve.default_models import ensure_default_models
    from serve.logs import configure, get_logger

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "config": args.config}.items() if v is not None}
    settings = Settings(**overrides)
    configure(settings.log_level, settings.log_json)
    log = get_logger("aligngate")
    from serve.admission.auth import OpenExposure, check_exposure

    try:  # before anything slow (model builds, engines): an open public bind is refused at once
        check_exposure(settings, warn=False)  # create_app warns
    except OpenExposure as e:
        print(f"aligngate serve: {e}", file=sys.stderr)
        return 2
    versions = list(settings.versions)
    if args.model:
        versions = [VersionSpec(name=Path(args.model).name or "model", model=args.model, weight=1.0)]
    if not versions:
        versions = ensure_default_models(settings.cache_dir)
        log.info("embedded_default", versions=[v.name for v in versions], cache_dir=str(settings.cache_dir))
    app = create_app(settings, versions)
    log.info("listening", url=f"http://{settings.host}:{settings.port}", public_model=settings.public_model)
    from serve.engines.drain import DrainingServer

    # SIGTERM: drain first (503 to new work, in-flight requests finish, bounded by drain_timeout_s), then
    # uvicorn's own shutdown with a short grace for connections still open at the bound (serve/engines/drain.py).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                            log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    DrainingServer(config, app.state.gateway.drain, settings.drain_timeout_s, settings.drain_grace_s).run()
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

    d = sub.add_parser("demo", help="end-to-end demos: `aligngate demo incident --help`",
                       description="End-to-end demos with real parts. `incident`: the seeds' reward-hacking policy "
                                   "as a canary, caught and rolled back; a good candidate promoted.")
    d.add_argument("demo", choices=["incident"])
    d.add_argument("rest", nargs=argparse.REMAINDER, help="the demo's own flags (see `aligngate demo incident --help`)")
    d.set_defaults(func=lambda a: _demo(a.demo, a.rest))

    bn = sub.add_parser("bench", help="side-by-side serving benchmarks (see `aligngate bench --help`)",
                        add_help=False)
    bn.add_argument("rest", nargs=argparse.REMAINDER)
    bn.set_defaults(func=lambda a: _bench(a.rest))

    t = sub.add_parser("train", help="offline RLHF stages (see `aligngate train --help`)", add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=lambda a: _train(a.rest))
    return p


def _train(rest: list[str]) -> int:
    from training.cli import main as train_main

    return train_main(rest)


def _demo(name: str, rest: list[str]) -> int:
    """`aligngate demo incident ...` is `python -m benchmarks.incident ...`, run from the source checkout."""
    return _run_checkout_module(f"benchmarks.{name}", rest, f"demo {name}")


def _bench(rest: list[str]) -> int:
    """`aligngate bench ...` is `python -m benchmarks ...`, run from the source checkout."""
    return _run_checkout_module("benchmarks", rest, "bench")


def source_checkout() -> Path | None:
    """The source checkout this aligngate runs from: the folder with pyproject.toml and benchmarks/ above this
    file (an editable install, or PYTHONPATH on a clone). None for a wheel install, which ships the product only."""
    for d in Path(__file__).resolve().parents:
        if (d / "pyproject.toml").is_file() and (d / "benchmarks" / "__main__.py").is_file():
            return d
    return None


def _run_checkout_module(module: str, rest: list[str], what: str) -> int:
    """Run one of the checkout's benchmark modules as its own process. The product never imports benchmarks/ (it is
    not installed with it: tests/test_import_graph.py), so the demo and the benchmarks work from a clone only."""
    import os
    import signal
    import subprocess

    root = source_checkout()
    if root is None:
        print(f"aligngate {what}: this command runs the benchmarks/ folder of aligngate's source checkout, which this "
              f"install ({Path(__file__).resolve().parent}) does not include; clone the repository, `pip install -e "
              f".` there and run it again", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", module, *rest], env=env)
    # the module stops its own gateways and engines on SIGINT/SIGTERM: pass SIGTERM on and wait for it; Ctrl-C
    # reaches it directly (same process group)
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    except ValueError:  # not the main thread: no handler to install
        previous = None
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["demo", "incident"]:  # the demo parses its own arguments (and its own --help)
        return _demo("incident", argv[2:])
    if argv[:1] == ["train"]:  # the training CLI parses its own arguments (and its own --help)
        return _train(argv[1:])
    if argv[:1] == ["bench"]:  # so does the benchmark CLI (`python -m benchmarks`)
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
