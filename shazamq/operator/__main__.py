"""`python -m shazamq.operator`: run the ShazamqCluster operator until SIGTERM or SIGINT.

Why a module of its own: it is the process boundary. It reads the environment, picks the
watch scope and ports, configures logging and hands over to Kopf (`kopf.run`); the
handlers themselves live in `shazamq.operator.handlers`.

Environment (each has a command-line flag of the same meaning, which wins):

- ``WATCH_NAMESPACE``: comma-separated namespaces to watch; empty or unset: all namespaces.
- ``METRICS_PORT``: port of the operator's ``/metrics`` (default 8080; ``0`` disables it).
- ``HEALTH_PORT``: port of Kopf's liveness endpoint ``/healthz`` (default 8081; ``0``
  disables it).
- ``LOG_LEVEL``: ``DEBUG``, ``INFO`` (default) or ``WARNING``; ``LOG_FORMAT``: ``full``
  (default), ``plain`` or ``json``.

Credentials: in a pod, its service account; elsewhere, ``KUBECONFIG`` or
``~/.kube/config`` (token, client-certificate or basic credentials).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    health_port: int = 8081
    log_level: str = "INFO"
    log_format: str = "full"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _namespaces(value: str) -> tuple[str, ...]:
    return tuple(ns.strip() for ns in value.split(",") if ns.strip())


def parse_options(argv: list[str] | None, environ: Mapping[str, str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m shazamq.operator",
        description="Run the Shazamq operator (reconciles ShazamqCluster resources).",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        help="namespace to watch (repeatable; default $WATCH_NAMESPACE, else all namespaces)",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="default $METRICS_PORT")
    parser.add_argument("--health-port", type=int, default=None, help="default $HEALTH_PORT")
    parser.add_argument("--log-level", default=None, help="default $LOG_LEVEL or INFO")
    parser.add_argument(
        "--log-format", choices=["full", "plain", "json"], default=None, help="default full"
    )
    args = parser.parse_args(argv)
    namespaces = (
        tuple(ns for value in args.namespace for ns in _namespaces(value))
        if args.namespace
        else _namespaces(environ.get("WATCH_NAMESPACE", ""))
    )
    return Options(
        namespaces=namespaces,
        metrics_port=args.metrics_port
        if args.metrics_port is not None
        else int(environ.get("METRICS_PORT") or 8080),
        health_port=args.health_port
        if args.health_port is not None
        else int(environ.get("HEALTH_PORT") or 8081),
        log_level=(args.log_level or environ.get("LOG_LEVEL") or "INFO").upper(),
        log_format=(args.log_format or environ.get("LOG_FORMAT") or "full").lower(),
    )


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    options = parse_options(argv, os.environ if environ is None else environ)

    import kopf

    import shazamq.operator.handlers  # noqa: F401  (registers the handlers)

    formats = {"full": kopf.LogFormat.FULL, "plain": kopf.LogFormat.PLAIN}
    kopf.configure(
        debug=options.log_level == "DEBUG",
        verbose=options.log_level in ("DEBUG", "INFO"),
        quiet=options.log_level not in ("DEBUG", "INFO"),
        log_format=formats.get(options.log_format, kopf.LogFormat.JSON),
    )
    kopf.run(
        clusterwide=options.clusterwide,
        namespaces=options.namespaces,
        liveness_endpoint=(
            f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None
        ),
        memo=kopf.Memo(metrics_port=options.metrics_port or None),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
