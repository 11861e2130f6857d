"""worker.emulator.config: flags, EMULATOR_* env vars and live updates share one set of names."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.support.emulator import REPO_ROOT, free_port
from worker.emulator.config import ConfigError, EmulatorConfig, parse_args


def test_defaults_match_the_documented_dev_setup() -> None:
    config = parse_args([], environ={})

    assert (config.host, config.port, config.endpoint_id, config.api_key) == (
        "127.0.0.1",
        8787,
        "comicgen-local",
        "local-dev-key",
    )
    assert (config.rate_limit_run, config.rate_limit_status, config.result_ttl) == (
        1000,
        2000,
        1800.0,
    )


def test_env_vars_fill_in_and_flags_win() -> None:
    environ = {"EMULATOR_PORT": "9100", "EMULATOR_WORKERS": "12", "EMULATOR_LATENCY": "0.25"}

    config = parse_args(["--workers", "3", "--fail-rate", "0.1"], environ=environ)

    assert (config.port, config.workers, config.latency, config.fail_rate) == (9100, 3, 0.25, 0.1)


def test_a_bad_flag_value_stops_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--fail-rate", "1.5"], environ={})

    assert "fail_rate" in capsys.readouterr().err


def test_live_updates_coerce_json_and_refuse_nonsense() -> None:
    config = EmulatorConfig()

    assert config.updated({"workers": 20.0, "seed": None}).workers == 20
    with pytest.raises(ConfigError, match="unknown"):
        config.updated({"latncy": 1})
    with pytest.raises(ConfigError, match="only be set at start"):
        config.updated({"port": 1})
    with pytest.raises(ConfigError, match="integer"):
        config.updated({"workers": 2.5})
    with pytest.raises(ConfigError, match="number"):
        config.updated({"latency": True})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_process_shuts_down_cleanly_on_a_signal(sig: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.emulator", "--port", str(free_port())],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        process.send_signal(sig)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert "/v2/comicgen-local" in banner
    assert "local-dev-key" in banner
