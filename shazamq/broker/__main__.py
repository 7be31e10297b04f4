"""`python -m shazamq.broker [--config FILE]`: run one broker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from shazamq.config import BrokerConfig, ConfigError, dump_toml, load_config


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shazamq.broker",
        description="Run a Shazamq broker (Kafka wire protocol). Settings come from the "
        "embedded defaults, then --config, then SHAZAMQ_<SECTION>__<KEY> variables.",
    )
    parser.add_argument("--config", "-c", help="TOML configuration file")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SHAZAMQ_LOG_LEVEL", "INFO"),
        help="logging level (default INFO, or $SHAZAMQ_LOG_LEVEL)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it as TOML and exit",
    )
    return parser.parse_args(argv)


async def _run(config: BrokerConfig) -> int:
    from .app import Broker

    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
        if args.check_config:
            print(dump_toml(config), end="")
            return 0
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            return asyncio.run(_run(config))
        return uvloop.run(_run(config))
    except ConfigError as exc:
        print(f"shazamq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
