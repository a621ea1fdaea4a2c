"""Command line: `sdapi serve`, `sdapi make-tiny-model`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "config.yaml"

# Each command imports what it runs inside its function, not at the top: `sdapi --help` and a config error then
# answer at once instead of after importing torch and diffusers (seconds). There is no import cycle to dodge.


def _serve(arguments: argparse.Namespace) -> int:
    import uvicorn

    from sdapi.api.app import create_app
    from sdapi.config import load_config
    from sdapi.errors import ConfigError

    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"sdapi: {error.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    host = arguments.host or config.server.host
    port = arguments.port or config.server.port
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=config.log_level.lower(),
        # Connections get this long to finish on SIGTERM; the worker's own grace period follows it.
        timeout_graceful_shutdown=5,
    )
    return 0


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
    serve.set_defaults(run=_serve)

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
