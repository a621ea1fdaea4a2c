"""Command line: `sdapi serve [--role all|api]`, `sdapi worker`, `sdapi make-tiny-model`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdapi.config import Config

DEFAULT_CONFIG = "config.yaml"

# Each command imports what it runs inside its function, not at the top: `sdapi --help` and a config error then
# answer at once instead of after importing torch and diffusers (seconds). There is no import cycle to dodge.


def _load(arguments: argparse.Namespace) -> Config | None:
    """The config with the command line's overrides, logging set up and the database migrated; None (after saying
    why on stderr) when any of that fails."""
    from sdapi.config import load_config, with_device
    from sdapi.errors import ConfigError, SdapiError

    try:
        config = load_config(arguments.config)
        if getattr(arguments, "device", None):
            config = with_device(config, arguments.device)
    except ConfigError as error:
        print(f"sdapi: {error.message}", file=sys.stderr)
        return None
    from sdapi.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(_migrate(config))
    except SdapiError as error:
        print(f"sdapi: {error.message}", file=sys.stderr)
        return None
    return config


async def _migrate(config: Config) -> None:
    """Create or upgrade the schema once before serving, so a database problem is one clear line, not a traceback
    from inside the server's start-up."""
    from sdapi.bootstrap import open_stores

    stores = open_stores(config)
    try:
        await stores.database.open()
    finally:
        await stores.database.close()


def _serve(arguments: argparse.Namespace) -> int:
    import uvicorn

    from sdapi.api.app import create_app
    from sdapi.nodes import Role

    config = _load(arguments)
    if config is None:
        return 2
    host = arguments.host or config.server.host
    port = arguments.port or config.server.port
    uvicorn.run(
        create_app(config, role=Role(arguments.role)),
        host=host,
        port=port,
        log_level=config.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (configure_logging): one format, with request ids
        # Connections get this long to finish on SIGTERM; the worker's own grace period follows it.
        timeout_graceful_shutdown=5,
    )
    return 0


def _worker(arguments: argparse.Namespace) -> int:
    from sdapi.errors import SdapiError

    config = _load(arguments)
    if config is None:
        return 2
    try:
        asyncio.run(_run_worker(config))
    except SdapiError as error:  # it could not start: the message says why
        print(f"sdapi: {error.message}", file=sys.stderr)
        return 2
    return 0


async def _run_worker(config: Config) -> None:
    """A worker without HTTP: runs until SIGTERM or SIGINT, then stops as `sdapi serve` does."""
    from sdapi.bootstrap import build_runtime
    from sdapi.nodes import Role

    runtime = build_runtime(config, role=Role.WORKER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runtime.start()
    except BaseException:
        await runtime.stop()
        raise
    logging.getLogger("sdapi.worker").info("worker %s started on %s", runtime.node_id, config.model.device)
    try:
        await stop.wait()
    finally:
        await runtime.stop()


def _make_tiny_model(arguments: argparse.Namespace) -> int:
    from sdapi.tiny_model import make_tiny_model

    path = make_tiny_model(arguments.directory)
    print(f"tiny model written to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sdapi", description="Stable Diffusion image-generation HTTP service")
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    serve.add_argument("--host", default=None, help="listen address (default: server.host from the config)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default: server.port from the config)")
    serve.add_argument(
        "--role",
        choices=["all", "api"],
        default="all",
        help="all: the API and a worker in this process (default); api: HTTP only, workers run as `sdapi worker`",
    )
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="load the model and run tasks from the store (no HTTP)")
    worker.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    worker.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: model.device from the config)")
    worker.set_defaults(run=_worker)

    tiny = commands.add_parser("make-tiny-model", help="write the tiny random test model (diffusers format)")
    tiny.add_argument("directory", help="folder to write the model to")
    tiny.set_defaults(run=_make_tiny_model)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    result: int = arguments.run(arguments)
    return result


if __name__ == "__main__":
    sys.exit(main())
