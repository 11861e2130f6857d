"""A local RunPod Serverless endpoint: ``python -m worker.emulator --help``.

It serves RunPod's queue API under ``/v2/<endpoint_id>/`` (``run``, ``runsync``, ``status``,
``cancel``, ``retry``, ``health``, ``purge-queue``) with the real worker handler behind simulated
GPU workers, and a loopback-only control plane for tests and benchmarks:

- ``GET|POST /_emulator/config``: read or change settings live (JSON keys = flag names with
  underscores; ``workers`` resizes the pool). Answers the full config.
- ``GET /_emulator/stats``: ``requests`` (per operation, per HTTP status), ``jobs`` (cumulative:
  ``submitted``, ``retried``, ``COMPLETED``, ``FAILED``, ``CANCELLED``, ``TIMED_OUT``,
  ``TTL_EXPIRED``), ``in_queue``/``in_progress``/``in_flight`` now, ``max_in_flight`` seen,
  ``stored_jobs``, ``executions`` (every execution a worker started, whatever its outcome),
  ``runs_per_input`` (only executions that ended COMPLETED, keyed by the canonical JSON of the
  input: ``distinct`` inputs completed, ``max`` completions of one input, ``duplicates`` = inputs
  completed more than once, ``extra_runs`` = completions beyond the first), ``webhooks``
  (``delivered``, ``failed`` after 3 tries, ``dropped``, ``attempts``), ``workers``.
- ``POST /_emulator/reset``: forget jobs, queue and counters; ``{"restore_config": true}`` also
  restores the settings the process started with.

A prompt containing ``[fail:N]`` fails the first N executions of that exact input;
``[fail:always]`` fails every one.
"""

from __future__ import annotations

from worker.emulator.config import ConfigError, EmulatorConfig, parse_args
from worker.emulator.server import Emulator

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "parse_args"]
