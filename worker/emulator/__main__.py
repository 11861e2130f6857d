"""Entry point: ``python -m worker.emulator [flags]`` (flags also read from ``EMULATOR_*``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from worker.emulator.config import EmulatorConfig, parse_args
from worker.emulator.server import Emulator
from worker.handler import SourceError, prepare_image_source


async def serve(config: EmulatorConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop workers and close connections cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the banner: whoever waits for it may signal at once and expects a clean exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    emulator = Emulator(config)
    # access_log off: at hundreds of requests per second it costs more than the API itself.
    runner = web.AppRunner(emulator.create_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    display_host = f"[{host}]" if ":" in host else host
    per = "per 768 x 768, 25-step image" if config.latency_scale == "pixels" else "per job"
    print(
        f"RunPod emulator on http://{display_host}:{port}/v2/{config.endpoint_ids[0]} "
        f"(endpoint id {', '.join(config.endpoint_ids)}, api key {config.api_key}, "
        f"{config.workers} workers, latency {config.latency}s {per})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        # Jobs first: that answers waiting /runsync calls, so the HTTP shutdown is immediate.
        await emulator.close()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        # The real handler's image source (IMAGE_SOURCE): a diffusion model loads here, before
        # the port opens, as on a RunPod worker, and a bad one stops the emulator with its reason.
        prepare_image_source()
    except SourceError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        sys.exit(1)
    try:
        asyncio.run(serve(config))
    except OSError as exc:  # typically the port is taken: say so without a traceback
        print(f"emulator: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
