"""Command line: `sdapi serve [--role all|api]`, `sdapi worker`, `sdapi make-tiny-model`,
`sdapi install-default-model`, and the client commands
`sdapi generate`, `sdapi tasks`, `sdapi cancel` for a running service."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdapi.client import Client
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
    from sdapi.observability.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    try:
        from sdapi.service.catalog import ModelCatalog

        ModelCatalog(config)  # a model of a kind this service does not serve: one line, before anything starts
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
    from sdapi.core.nodes import Role
    from sdapi.observability import tracing

    config = _load(arguments)
    if config is None:
        return 2
    tracing.configure(arguments.role)  # from the OTEL_* environment; off without it
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
    return _exit_past_a_running_generation(0)


def _worker(arguments: argparse.Namespace) -> int:
    from sdapi.errors import SdapiError
    from sdapi.observability import tracing

    config = _load(arguments)
    if config is None:
        return 2
    tracing.configure("worker")
    try:
        asyncio.run(_run_worker(config))
    except SdapiError as error:  # it could not start: the message says why
        print(f"sdapi: {error.message}", file=sys.stderr)
        return 2
    return _exit_past_a_running_generation(0)


def _exit_past_a_running_generation(code: int) -> int:
    """`code`, or the process ended now with it when a shutdown left a generation running (its task already handed
    back to run again). That generation is inside torch on a daemon thread, and the interpreter's finalisation
    would tear torch's thread pools down under it: the process aborts ("terminate called without an active
    exception", exit 134 or 139) instead of exiting cleanly. A bare process never got there, because uvicorn
    re-raises SIGTERM once it has shut down; as a container's PID 1, which ignores that signal, it does."""
    from sdapi.worker.generation_thread import generation_in_progress

    if generation_in_progress():
        atexit._run_exitfuncs()  # what finalisation would have run first: queued spans are sent
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _run_worker(config: Config) -> None:
    """A worker without HTTP: runs until SIGTERM or SIGINT, then stops as `sdapi serve` does."""
    from sdapi.bootstrap import build_runtime
    from sdapi.core.nodes import Role

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
    from sdapi.families.tiny import make_tiny_model
    from sdapi.observability.logs import mute_import_warnings

    mute_import_warnings()
    path = make_tiny_model(arguments.directory, progress=sys.stderr, family=arguments.family)
    print(f"tiny model written to {path}")
    return 0


def _preview_map(arguments: argparse.Namespace) -> int:
    """Fit a model's latent-to-RGB preview map as the service does on its first preview, and print it."""
    import json

    from sdapi.config import ModelConfig
    from sdapi.engines.torch_engine import TorchEngine
    from sdapi.observability.logs import mute_import_warnings
    from sdapi.previews.latent_rgb import map_of

    mute_import_warnings()
    engine = TorchEngine(ModelConfig(path=arguments.model, device="cpu", dtype="float32"))
    engine.load()
    fitted = map_of(engine._pipelines().text_to_image)
    document = {
        "family": engine.family.family.name if engine.family is not None else None,
        "channels": fitted.channels,
        "matrix": [[round(value, 6) for value in row] for row in fitted.matrix.tolist()],
        "bias": [round(value, 6) for value in fitted.bias.tolist()],
        "rms_error": round(fitted.rms_error, 4),
    }
    print(json.dumps(document, indent=2))
    return 0


def _install_default_model(arguments: argparse.Namespace) -> int:
    from sdapi.models.default_model import SHIPPED_MODEL, ManifestMismatch, install_default_model

    try:
        path = install_default_model(Path(arguments.directory), arguments.shipped or SHIPPED_MODEL)
    except ManifestMismatch as error:
        print(f"sdapi: the shipped default model does not match its manifest: {error}", file=sys.stderr)
        return 1
    print(f"default model installed to {path} (sha256 sums checked)")
    return 0


def _client(arguments: argparse.Namespace) -> Client:
    from sdapi.client import Client, ClientError

    if not arguments.key:
        raise ClientError(2, "no API key: pass --key or set SDAPI_API_KEY")
    return Client(arguments.url, arguments.key)


def _run_client(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A client command, with its ClientError turned into the message and exit code."""

    def run(arguments: argparse.Namespace) -> int:
        from sdapi.client import ClientError

        try:
            return command(arguments)
        except ClientError as error:
            print(f"sdapi: {error.message}", file=sys.stderr)
            return error.code

    return run


def _generate(arguments: argparse.Namespace) -> int:
    from sdapi.client import generate, init_image_data_url

    body: dict[str, object] = {"prompt": arguments.prompt, "num_images": arguments.n}
    if arguments.size:
        body["width"], body["height"] = arguments.size
    optional = {
        "negative_prompt": arguments.negative,
        "seed": arguments.seed,
        "num_inference_steps": arguments.steps,
        "guidance_scale": arguments.guidance,
        "scheduler": arguments.scheduler,
        "strength": arguments.strength,
        "output_format": arguments.format,
        "model": arguments.model,
        "loras": arguments.lora or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if arguments.init_image:
        body["init_image"] = init_image_data_url(Path(arguments.init_image))
    return generate(_client(arguments), body, Path(arguments.out))


def _tasks(arguments: argparse.Namespace) -> int:
    from sdapi.client import list_tasks

    return list_tasks(_client(arguments), arguments.limit, arguments.status)


def _cancel(arguments: argparse.Namespace) -> int:
    from sdapi.client import cancel

    return cancel(_client(arguments), arguments.task_id)


def _argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser that raises ValueError with a readable message."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _add_client_commands(commands: Any) -> None:
    from sdapi.client import DEFAULT_URL, parse_lora, parse_size

    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get("SDAPI_URL", DEFAULT_URL), help="service URL (SDAPI_URL)")
    connection.add_argument("--key", default=os.environ.get("SDAPI_API_KEY"), help="API key (SDAPI_API_KEY)")

    generate = commands.add_parser(
        "generate", parents=[connection], help="make images with a running service and save them"
    )
    generate.add_argument("prompt")
    generate.add_argument("--out", default=".", help="folder for the images (default: here)")
    generate.add_argument("--n", type=int, default=1, help="number of images (1-10)")
    generate.add_argument("--seed", type=int, default=None, help="seed of the first image (image k: seed + k)")
    generate.add_argument("--size", type=_argument_type(parse_size), default=None, help="WIDTHxHEIGHT, e.g. 768x512")
    generate.add_argument("--steps", type=int, default=None, help="denoising steps")
    generate.add_argument("--guidance", type=float, default=None, help="guidance scale (CFG)")
    generate.add_argument("--negative", default=None, help="negative prompt")
    generate.add_argument("--scheduler", default=None, help="scheduler class name")
    generate.add_argument(
        "--lora", type=_argument_type(parse_lora), action="append", help="NAME or NAME:WEIGHT (repeatable)"
    )
    generate.add_argument("--init-image", default=None, help="PNG or JPEG: image-to-image")
    generate.add_argument("--strength", type=float, default=None, help="image-to-image strength (0-1)")
    generate.add_argument("--format", choices=["png", "jpg", "webp"], default=None, help="output format")
    generate.add_argument("--model", default=None, help="model name, on a service that serves several")
    generate.set_defaults(run=_run_client(_generate))

    tasks = commands.add_parser("tasks", parents=[connection], help="list recent tasks of your key")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--status", choices=["pending", "processing", "completed", "failed"], default=None)
    tasks.set_defaults(run=_run_client(_tasks))

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a task")
    cancel.add_argument("task_id")
    cancel.set_defaults(run=_run_client(_cancel))


def parser() -> argparse.ArgumentParser:
    from sdapi.families import DEFAULT_TINY_VARIANT, TINY_VARIANTS  # no torch: the parser stays quick

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
    tiny.add_argument(
        "--family",
        choices=TINY_VARIANTS,
        default=DEFAULT_TINY_VARIANT,
        help="architecture (default: sd15; the -inpaint ones have an inpainting checkpoint's 9-channel UNet)",
    )
    tiny.set_defaults(run=_make_tiny_model)

    preview_map = commands.add_parser(
        "preview-map",
        help="fit a model's latent-to-RGB live-preview map from its VAE (as the service does) and print it as JSON",
    )
    preview_map.add_argument("model", help="a model folder or single file, as config.yaml's model.path")
    preview_map.set_defaults(run=_preview_map)

    default = commands.add_parser(
        "install-default-model",
        help="copy the trained default model shipped in the repository to a folder, its sha256 sums checked",
    )
    default.add_argument("directory", help="folder to install it to (config.yaml's model.path)")
    default.add_argument(
        "--shipped",
        type=Path,
        default=None,
        help="the shipped pipeline folder (default: this checkout's models/scenes-sd)",
    )
    default.set_defaults(run=_install_default_model)
    _add_client_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    result: int = arguments.run(arguments)
    return result


if __name__ == "__main__":
    sys.exit(main())
