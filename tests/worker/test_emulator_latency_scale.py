"""The emulator's `latency_scale`: a job takes time like a GPU, in proportion to its pixels and
steps, so estimates learned from its executionTime can be tested against a known truth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.emulator import EmulatorProcess
from tests.worker.test_emulator import Api
from worker.emulator.config import ConfigError, EmulatorConfig, parse_args
from worker.emulator.server import work_scale

REFERENCE = {"width": 768, "height": 768, "num_inference_steps": 25}


@pytest.fixture
def api(emulator: EmulatorProcess) -> Iterator[Api]:
    api = Api(emulator)
    yield api
    api.session.close()


def run_input(prompt: str, **params: object) -> dict[str, object]:
    return {"prompt": prompt, "seed": 7, **REFERENCE, **params}


@pytest.mark.parametrize(
    ("job_input", "scale"),
    [
        (REFERENCE, 1.0),
        ({"width": 384, "height": 768, "num_inference_steps": 25}, 0.5),
        ({"width": 1536, "height": 768, "num_inference_steps": 50}, 4.0),
        ({"width": 768, "height": 768, "num_inference_steps": 25, "num_images": 3}, 3.0),
        # What the handler defaults to when a key is missing: 768 x 768, 25 steps, 1 image.
        ({"prompt": "defaults"}, 1.0),
        # Values the handler refuses count as the reference; the job then fails in the handler.
        ({"width": "wide", "height": True, "num_inference_steps": -3}, 1.0),
        ({"width": 10**9, "height": 768, "num_inference_steps": 25}, 1.0),
        ("not an object", 1.0),
    ],
)
def test_work_scales_with_width_height_steps_and_images(job_input: object, scale: float) -> None:
    assert work_scale(job_input) == pytest.approx(scale)


def test_latency_scale_comes_from_a_flag_an_env_var_or_json() -> None:
    assert parse_args([], environ={}).latency_scale == "fixed"
    assert parse_args([], environ={"EMULATOR_LATENCY_SCALE": "pixels"}).latency_scale == "pixels"
    assert parse_args(["--latency-scale", "pixels"], environ={}).latency_scale == "pixels"
    assert EmulatorConfig().updated({"latency_scale": "pixels"}).latency_scale == "pixels"
    with pytest.raises(ConfigError, match="latency_scale must be 'fixed' or 'pixels'"):
        EmulatorConfig().updated({"latency_scale": "megapixels"})


def test_model_speed_takes_a_json_object_of_factors() -> None:
    flags = parse_args(["--model-speed", '{"flux-dev": 2.5}'], environ={})
    env = parse_args([], environ={"EMULATOR_MODEL_SPEED": '{"sdxl-turbo": 0.2}'})

    assert flags.model_speed == {"flux-dev": 2.5}
    assert env.model_speed == {"sdxl-turbo": 0.2}
    assert EmulatorConfig().updated({"model_speed": {"a": 1}}).model_speed == {"a": 1.0}


@pytest.mark.parametrize(
    "speeds",
    [{"flux-dev": 0}, {"flux-dev": -1}, {"flux-dev": "fast"}, {"flux-dev": True}, ["flux-dev"],
     "{not json", {"": 2.0}, {"flux-dev": float("inf")}],
)  # fmt: skip
def test_a_nonsense_model_speed_is_refused(speeds: object) -> None:
    with pytest.raises(ConfigError, match="model_speed"):
        EmulatorConfig().updated({"model_speed": speeds})


def test_under_pixels_a_job_takes_the_reference_time_scaled_by_its_work(
    emulator: EmulatorProcess, api: Api
) -> None:
    emulator.configure(latency_scale="pixels", latency=0.4, jitter=0, workers=4)
    jobs = {
        "reference": api.run(input=run_input("reference")),
        "a quarter": api.run(input=run_input("quarter", width=384, height=384)),
        "twice the steps, wider": api.run(
            input=run_input("bigger", width=1024, num_inference_steps=50)
        ),
    }
    expected = {"reference": 0.4, "a quarter": 0.1, "twice the steps, wider": 0.4 * 4 / 3 * 2}

    for name, job_id in jobs.items():
        job = api.wait(job_id)
        assert job["status"] == "COMPLETED", job
        # The render happens within the simulated time: executionTime is that time, give or
        # take the event loop's timer resolution and a busy machine's scheduling.
        # (The quarter's bound still stays below the reference's own.)
        assert expected[name] * 1000 <= job["executionTime"] < expected[name] * 1000 + 250, name


def test_under_pixels_jitter_stays_the_same_fraction_at_every_size(
    emulator: EmulatorProcess, api: Api
) -> None:
    emulator.configure(latency_scale="pixels", latency=0.4, jitter=0.2, workers=4)
    small = [api.run(input=run_input(f"small {n}", width=384, height=384)) for n in range(8)]

    times = [api.wait(job_id)["executionTime"] for job_id in small]

    # 0.1 s +/- 50 % for a quarter of the reference's pixels: never the reference's +/- 0.2 s.
    assert all(50 <= ms < 150 + 100 for ms in times), times
    assert max(times) - min(times) > 10  # it does vary


def test_a_model_named_in_model_speed_takes_its_factor_longer(
    emulator: EmulatorProcess, api: Api
) -> None:
    emulator.configure(latency_scale="pixels", latency=0.2, jitter=0, model_speed={"flux-dev": 3})

    slow = api.wait(api.run(input=run_input("slow", model="flux-dev")))
    usual = api.wait(api.run(input=run_input("usual", model="sdxl")))

    assert 600 <= slow["executionTime"] < 1000
    assert 200 <= usual["executionTime"] < 600


def test_fixed_latency_ignores_the_size(emulator: EmulatorProcess, api: Api) -> None:
    emulator.configure(latency=0.2, jitter=0)

    small = api.wait(api.run(input=run_input("small", width=128, height=128)))

    # Scaled by its pixels, this panel would take 6 ms.
    assert small["executionTime"] >= 200
