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


def test_the_money_fault_settings_default_off() -> None:
    config = parse_args([], environ={})

    assert (
        config.ambiguous_run_rate,
        config.ambiguous_run_mode,
        config.ambiguous_run_next,
        config.run_answer_delay,
    ) == (0.0, "mixed", 0, 0.0)


def test_the_money_fault_settings_come_from_flags_and_env_vars() -> None:
    environ = {
        "EMULATOR_AMBIGUOUS_RUN_MODE": "drop",
        "EMULATOR_AMBIGUOUS_RUN_NEXT": "2",
        "EMULATOR_RUN_ANSWER_DELAY": "1.5",
    }

    config = parse_args(
        ["--ambiguous-run-rate", "0.25", "--ambiguous-run-mode", "500"], environ=environ
    )

    assert (
        config.ambiguous_run_rate,
        config.ambiguous_run_mode,
        config.ambiguous_run_next,
        config.run_answer_delay,
    ) == (0.25, "500", 2, 1.5)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ambiguous_run_rate": 1.5}, "ambiguous_run_rate must be a fraction"),
        ({"ambiguous_run_rate": -0.1}, "ambiguous_run_rate must be a fraction"),
        ({"ambiguous_run_rate": "often"}, "ambiguous_run_rate: cannot use"),
        ({"ambiguous_run_mode": "sometimes"}, "ambiguous_run_mode must be '500'"),
        ({"ambiguous_run_mode": ""}, "ambiguous_run_mode must be '500'"),
        ({"ambiguous_run_next": -1}, "ambiguous_run_next must be a count"),
        ({"ambiguous_run_next": 2.5}, "ambiguous_run_next must be an integer"),
        ({"ambiguous_run_next": True}, "ambiguous_run_next must be a number"),
        ({"run_answer_delay": -1}, "run_answer_delay must be between 0 and 600"),
        ({"run_answer_delay": 601}, "run_answer_delay must be between 0 and 600"),
        ({"run_answer_delay": "nan"}, "run_answer_delay must be between 0 and 600"),
    ],
)
def test_the_money_fault_settings_refuse_nonsense(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        EmulatorConfig().updated(change)


def test_the_money_fault_settings_take_json_values() -> None:
    config = EmulatorConfig().updated(
        {"ambiguous_run_mode": 500, "ambiguous_run_next": 3.0, "run_answer_delay": 0}
    )

    assert (config.ambiguous_run_mode, config.ambiguous_run_next) == ("500", 3)


def test_a_bad_money_fault_flag_stops_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--ambiguous-run-mode", "never"], environ={})

    assert "ambiguous_run_mode" in capsys.readouterr().err
