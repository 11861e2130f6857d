"""A local RunPod Serverless endpoint: ``python -m worker.emulator --help``.

It serves RunPod's queue API under ``/v2/<endpoint_id>/`` (``run``, ``runsync``, ``status``,
``cancel``, ``retry``, ``health``, ``purge-queue``) with the real worker handler behind simulated
GPU workers, and a loopback-only control plane for tests and benchmarks:

- ``GET|POST /_emulator/config``: read or change settings live (JSON keys = flag names with
  underscores; ``workers`` resizes the pool). Answers the full config.
- ``GET /_emulator/stats``: ``requests`` (per operation, per HTTP status; ``dropped`` when the
  connection closed before the answer: an ambiguous ``drop``, or a client gone while
  ``run_answer_delay`` held the answer), ``jobs`` (cumulative: ``submitted`` as soon as a job is
  created, ``retried``, ``COMPLETED``, ``FAILED``, ``CANCELLED``, ``TIMED_OUT``, ``TTL_EXPIRED``,
  ``ambiguous`` = jobs created by a /run whose answer failed), ``in_queue``/``in_progress``/
  ``in_flight`` now, ``max_in_flight`` seen, ``stored_jobs``, ``executions`` (every execution a
  worker started, whatever its outcome), ``runs_per_input`` (only executions that ended
  COMPLETED, keyed by the canonical JSON of the input: ``distinct`` inputs completed, ``max``
  completions of one input, ``duplicates`` = inputs completed more than once, ``extra_runs`` =
  completions beyond the first), ``webhooks`` (``delivered``, ``failed`` after 3 tries,
  ``dropped``, ``attempts``), ``workers``, and the bill:

  - ``billed_ms``: the sum of ``executionTime`` RunPod would bill, over every execution that
    started: completed, failed (injected or a handler error), timed out (about the timeout),
    cancelled while running (the time it ran, which ``/status`` then shows), deleted by its
    ``policy.ttl`` mid-run (no status shows it any more; the time it ran). A job cancelled or
    purged while IN_QUEUE never ran and adds 0. Each execution is billed once, when it ends.
  - ``billed_count``: executions billed (a job rerun by ``/retry`` counts again);
  - ``billed_jobs``: job id -> billed ms (a retried job's executions summed under its id), the
    most recent 50,000 jobs; ``billed_ms`` and ``billed_count`` stay exact beyond that;
  - ``ambiguous_jobs``: ids of the last 1,000 jobs whose /run answer failed;
  - ``endpoints``: per endpoint id served (``--endpoint-id a,b`` serves several, one per model,
    sharing the workers): ``submitted``, the jobs that ended ``COMPLETED``, ``FAILED``,
    ``CANCELLED``, ``TIMED_OUT``, and that endpoint's ``billed_ms`` and ``billed_count``. A job
    id answers only under the endpoint that took it.

  A reset starts a new bill: jobs running at the reset are dropped unbilled.
- ``POST /_emulator/reset``: forget jobs, queue and counters; ``{"restore_config": true}`` also
  restores the settings the process started with.
- ``GET /_emulator/scaling``: the scale curve of an autoscaling endpoint (``--min-workers``,
  ``--max-workers``, ``--scaler-delay``, ``--idle-timeout``, ``--cold-start``), and
  ``GET /v1/endpoints/<id>``: its settings as RunPod's REST API shows them
  (worker/emulator/autoscale.py).

Every job that ends sends its webhook (RunPod's final status object), cancelled and purged ones
included; a job deleted by its ``policy.ttl`` sends none.

Ambiguous ``/run`` (``ambiguous_run_rate``, or ``ambiguous_run_next`` = N for exactly the next N
calls, counting down to 0 in the live config): the job is created and runs, is billed and sends
its webhook, but the answer is an HTTP 500 or a connection closed without a status line
(``ambiguous_run_mode``: ``500``, ``drop`` or ``mixed``), as a timeout after RunPod accepted a job
looks to a client. ``run_answer_delay`` holds every ``/run`` answer that many seconds after the job
is created, so a test can kill a client between RunPod accepting a job and the client recording
its id.

Timing: with ``latency_scale=fixed`` (the default) every execution takes ``latency`` (+/-
``jitter``) and then runs the handler. With ``latency_scale=pixels`` it takes like a GPU:
``latency`` is the time of a 768 x 768, 25-step image and an input takes that times its
``width x height x num_inference_steps x num_images`` over the reference's; jitter is drawn on
the reference time and scales with it (so it stays the same fraction at every size), and the
handler renders within that time, so ``executionTime`` is the simulated GPU time. An input that
names a ``model`` found in ``model_speed`` (``{"flux-dev": 2.5}``) takes that factor longer.
comicgen's inputs name their catalogue model (an extra key worker-sdxl ignores), so
``model_speed`` applies to them.

Prompt markers (anywhere in ``input.prompt``):

- ``[fail:N]`` fails the first N executions of that exact input (the seed included);
  ``[fail:always]`` fails every one.
- ``[blank:N]``: the first N executions of that input, counted without its seed (a blank panel
  is retried with a new seed), complete with flat one-colour PNGs of the asked size.
- ``[slow:S]``: every execution takes S seconds (a float) instead of ``latency``: with a small
  ``policy.executionTimeout`` it ends TIMED_OUT, or it stays running long enough to be
  cancelled mid-run.
"""

from __future__ import annotations

from worker.emulator.config import ConfigError, EmulatorConfig, parse_args
from worker.emulator.server import Emulator

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "parse_args"]
