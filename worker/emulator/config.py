"""The emulator's settings: command-line flags, ``EMULATOR_*`` env vars and live JSON updates.

Every setting has one name, used three ways: ``--rate-limit-status 200``,
``EMULATOR_RATE_LIMIT_STATUS=200`` and ``{"rate_limit_status": 200}`` on
``POST /_emulator/config``. Flags win over env vars, which win over the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# How an ambiguous /run fails its answer: HTTP 500, a closed connection, or either at random.
AMBIGUOUS_RUN_MODES = ("500", "drop", "mixed")
MAX_AMBIGUOUS_RUN_NEXT = 1_000_000
# Longer than any client's read timeout already; a bigger value is a typo that hangs a test.
MAX_RUN_ANSWER_DELAY_S = 600.0
# How a job's execution time follows its input: `fixed` takes `latency` whatever the image;
# `pixels` takes it for the reference image below and scales with width x height x steps.
LATENCY_SCALES = ("fixed", "pixels")
REFERENCE_WIDTH = REFERENCE_HEIGHT = 768
REFERENCE_STEPS = 25
MAX_MODEL_SPEEDS = 100


class ConfigError(ValueError):
    """A setting has a wrong type or is out of range."""


@dataclass(frozen=True)
class EmulatorConfig:
    """All knobs of the emulator; ``validate()`` is called by every constructor path here."""

    host: str = "127.0.0.1"
    port: int = 8787
    endpoint_id: str = "comicgen-local"
    api_key: str = "local-dev-key"
    workers: int = 4
    # The dev stack's figure (Procfile, docker-compose, bench harness): with `pixels`, about
    # what SDXL takes for a 768 x 768, 25-step panel on a 4090 (budgets/pricing.py agrees).
    latency: float = 1.5
    jitter: float = 0.0
    latency_scale: str = "fixed"
    # Relative execution time per model, for inputs that name their `model` (1.0 otherwise):
    # {"flux-dev": 2.5} makes flux-dev jobs take 2.5 times as long.
    model_speed: dict[str, float] = dataclasses.field(default_factory=dict)
    cold_start: float = 0.0
    # Autoscaling (worker/emulator/autoscale.py), on when max_workers > 0: `workers` is then
    # ignored and the pool moves between min_workers and max_workers.
    min_workers: int = 0
    max_workers: int = 0
    # RunPod's queue-delay scaler: add workers once the oldest queued job waited this long.
    scaler_delay: float = 4.0
    # RunPod's idle timeout: a worker idle this long stops (down to min_workers).
    idle_timeout: float = 5.0
    fail_rate: float = 0.0
    http_error_rate: float = 0.0
    rate_limit_run: int = 1000
    rate_limit_status: int = 2000
    result_ttl: float = 1800.0
    webhook_retry_delay: float = 10.0
    drop_webhooks: float = 0.0
    ambiguous_run_rate: float = 0.0
    ambiguous_run_mode: str = "mixed"
    ambiguous_run_next: int = 0
    run_answer_delay: float = 0.0
    render_threads: int = 2
    seed: int | None = None

    def validate(self) -> EmulatorConfig:
        """Return self, or raise ``ConfigError`` naming the first bad setting."""
        checks: list[tuple[str, bool, str]] = [
            ("port", 0 <= self.port <= 65535, "a TCP port (0 picks a free one)"),
            (
                "endpoint_id",
                bool(self.endpoint_ids) and all("/" not in part for part in self.endpoint_ids),
                "a path segment, or several separated by commas",
            ),
            ("api_key", bool(self.api_key), "non-empty"),
            ("workers", 0 <= self.workers <= 2000, "between 0 and 2000"),
            ("latency", self.latency >= 0, ">= 0 seconds"),
            ("jitter", self.jitter >= 0, ">= 0 seconds"),
            (
                "latency_scale",
                self.latency_scale in LATENCY_SCALES,
                " or ".join(repr(scale) for scale in LATENCY_SCALES),
            ),
            (
                "model_speed",
                len(self.model_speed) <= MAX_MODEL_SPEEDS
                and all(
                    isinstance(name, str)
                    and name
                    and isinstance(speed, float)
                    and math.isfinite(speed)
                    and 0 < speed <= 1000
                    for name, speed in self.model_speed.items()
                ),
                f"a JSON object of at most {MAX_MODEL_SPEEDS} model names to factors in (0, 1000]",
            ),
            ("cold_start", self.cold_start >= 0, ">= 0 seconds"),
            ("min_workers", 0 <= self.min_workers <= 2000, "between 0 and 2000"),
            (
                "max_workers",
                self.max_workers == 0 or self.min_workers <= self.max_workers <= 2000,
                "0 (no autoscaling) or between min_workers and 2000",
            ),
            ("scaler_delay", self.scaler_delay >= 0, ">= 0 seconds"),
            ("idle_timeout", self.idle_timeout >= 0, ">= 0 seconds"),
            ("fail_rate", 0 <= self.fail_rate <= 1, "a fraction between 0 and 1"),
            ("http_error_rate", 0 <= self.http_error_rate <= 1, "a fraction between 0 and 1"),
            ("drop_webhooks", 0 <= self.drop_webhooks <= 1, "a fraction between 0 and 1"),
            (
                "ambiguous_run_rate",
                0 <= self.ambiguous_run_rate <= 1,
                "a fraction between 0 and 1",
            ),
            (
                "ambiguous_run_mode",
                self.ambiguous_run_mode in AMBIGUOUS_RUN_MODES,
                " or ".join(repr(mode) for mode in AMBIGUOUS_RUN_MODES),
            ),
            (
                "ambiguous_run_next",
                0 <= self.ambiguous_run_next <= MAX_AMBIGUOUS_RUN_NEXT,
                f"a count of /run calls between 0 and {MAX_AMBIGUOUS_RUN_NEXT}",
            ),
            (
                "run_answer_delay",
                0 <= self.run_answer_delay <= MAX_RUN_ANSWER_DELAY_S,
                f"between 0 and {MAX_RUN_ANSWER_DELAY_S:g} seconds",
            ),
            ("rate_limit_run", self.rate_limit_run >= 0, "requests per 10 s, 0 = off"),
            ("rate_limit_status", self.rate_limit_status >= 0, "requests per 10 s, 0 = off"),
            ("result_ttl", self.result_ttl > 0, "> 0 seconds"),
            ("webhook_retry_delay", self.webhook_retry_delay >= 0, ">= 0 seconds"),
            ("render_threads", 1 <= self.render_threads <= 64, "between 1 and 64"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        return self

    @property
    def endpoint_ids(self) -> tuple[str, ...]:
        """The endpoint ids served: ``endpoint_id`` may list several, comma-separated, so one
        emulator stands in for one RunPod endpoint per model (they share its workers)."""
        return tuple(part.strip() for part in self.endpoint_id.split(",") if part.strip())

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with ``changes`` (JSON values) applied; unknown or read-only keys are errors."""
        unknown = sorted(set(changes) - set(FIELD_TYPES))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        frozen = sorted(key for key in changes if key in RESTART_ONLY)
        if frozen:
            raise ConfigError(f"{', '.join(frozen)} can only be set at start")
        values = {name: _coerce(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **values).validate()

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _model_speeds(value: Any) -> dict[str, float]:
    """A JSON object (or its text, from a flag or env var) of model name -> factor."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    speeds = {}
    for name, speed in value.items():
        if isinstance(speed, bool) or not isinstance(speed, int | float):
            raise ValueError(f"{name}: not a number")
        speeds[str(name)] = float(speed)
    return speeds


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return int(value)


FIELD_TYPES: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": int,
    "endpoint_id": str,
    "api_key": str,
    "workers": int,
    "latency": float,
    "jitter": float,
    "latency_scale": str,
    "model_speed": _model_speeds,
    "cold_start": float,
    "min_workers": int,
    "max_workers": int,
    "scaler_delay": float,
    "idle_timeout": float,
    "fail_rate": float,
    "http_error_rate": float,
    "rate_limit_run": int,
    "rate_limit_status": int,
    "result_ttl": float,
    "webhook_retry_delay": float,
    "drop_webhooks": float,
    "ambiguous_run_rate": float,
    "ambiguous_run_mode": str,
    "ambiguous_run_next": int,
    "run_answer_delay": float,
    "render_threads": int,
    "seed": _optional_int,
}
# The listening socket and the render thread pool exist once per process.
RESTART_ONLY = frozenset({"host", "port", "render_threads"})

HELP = {
    "host": "interface to listen on",
    "port": "TCP port (0 = any free port)",
    "endpoint_id": (
        "the endpoint id served under /v2/<endpoint_id>/; several, comma-separated, serve one "
        "endpoint per model (stats count each under `endpoints`)"
    ),
    "api_key": "the bearer key clients must send",
    "workers": "simulated GPU workers (0 leaves jobs IN_QUEUE)",
    "latency": (
        "seconds of simulated GPU time per job (with --latency-scale pixels: for a 768 x 768, "
        "25-step image)"
    ),
    "jitter": (
        "latency varies uniformly by +/- this many seconds (with pixels: for the reference "
        "image, scaled like the latency)"
    ),
    "latency_scale": (
        "fixed: every job takes --latency; pixels: a job takes --latency x (width x height x "
        "steps x num_images) / (768 x 768 x 25), the real handler's render included, as on a GPU"
    ),
    "model_speed": (
        'JSON object of model -> relative time, for inputs naming a "model" (e.g. '
        "'{\"flux-dev\": 2.5}'); other inputs take 1.0"
    ),
    "cold_start": "seconds a worker spends initializing before its first job",
    "min_workers": "with --max-workers: workers always on (warm at start)",
    "max_workers": (
        "autoscale up to this many workers by queue delay (0 = a fixed pool of --workers)"
    ),
    "scaler_delay": (
        "autoscaling: add workers once the oldest queued job has waited this many seconds"
    ),
    "idle_timeout": "autoscaling: a worker idle this many seconds stops (down to --min-workers)",
    "fail_rate": "fraction of jobs that end FAILED",
    "http_error_rate": "fraction of /v2 requests answered HTTP 500 before doing anything",
    "rate_limit_run": "/run + /runsync requests per 10 s before 429 (0 = off)",
    "rate_limit_status": "/status requests per 10 s before 429 (0 = off)",
    "result_ttl": "seconds a finished job stays readable before /status answers 404",
    "webhook_retry_delay": "seconds between the 3 webhook delivery attempts",
    "drop_webhooks": "fraction of webhooks silently never sent",
    "ambiguous_run_rate": (
        "fraction of /run calls that create the job (it runs, is billed, its webhook is sent) "
        "and then fail the answer, as a timeout after RunPod accepted does"
    ),
    "ambiguous_run_mode": (
        "how an ambiguous /run fails: 500 (HTTP 500), drop (connection closed without an "
        "answer) or mixed (either, at random)"
    ),
    "ambiguous_run_next": (
        "the next N /run calls are ambiguous whatever the rate; counts down to 0 (for tests)"
    ),
    "run_answer_delay": (
        "seconds /run waits after creating the job before answering (to kill a client "
        "between RunPod accepting a job and the client recording its id)"
    ),
    "render_threads": "threads running the real handler",
    "seed": "seed of the emulator's own random choices (jitter, fault coins)",
}


def _coerce(name: str, value: Any) -> Any:
    convert = FIELD_TYPES[name]
    if isinstance(value, bool) and convert is not str:
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        converted = convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r}") from None
    if convert is int and isinstance(value, float) and value != converted:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return converted


def env_name(field_name: str) -> str:
    return "EMULATOR_" + field_name.upper()


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> EmulatorConfig:
    """Read the configuration from flags, falling back to ``EMULATOR_*`` env vars."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m worker.emulator",
        description="A local RunPod Serverless endpoint running the real comicgen worker handler.",
    )
    defaults = EmulatorConfig()
    for field in dataclasses.fields(EmulatorConfig):
        name = field.name
        default = getattr(defaults, name)
        # argparse runs `type` over string defaults, so env values are parsed like flags.
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=FIELD_TYPES[name],
            default=environ.get(env_name(name), default),
            help=f"{HELP[name]} (env {env_name(name)}; default {default})",
        )
    try:
        return EmulatorConfig(**vars(parser.parse_args(argv))).validate()
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps type checkers content
