"""9. Estimates against the bill: on an emulator that takes time like a GPU (`latency_scale
pixels`: 1.5 s for a 768 x 768, 25-step SDXL panel, +/- 20 % jitter), how close each batch's
expected cost (before the retry allowance) is to what it then costs.

1. Before any history, the catalogue prices three sizes; the 768 x 768, 25-step batch runs.
2. 40 more panels of that size complete: 50 in all.
3. The estimate of a 10-panel batch at 1024 x 1024, 30 steps and one at 512 x 512, 20 steps is
   taken (now `measured`, from those 50 panels), then both run.

Targets (issue 15): after 50 panels, within 10 % at another size and step count; before any
history, the catalogue within a factor of 2.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bench.stack import Stack, StackConfig, report, verdict

WORKERS = 10
LATENCY = 1.5
JITTER = 0.3  # 20 % of the reference time, scaled with each panel's work
PANELS = 10
HISTORY = {"model": "sdxl", "width": 768, "height": 768, "steps": 25}
OTHERS = {
    "1024x1024x30": {"model": "sdxl", "width": 1024, "height": 1024, "steps": 30},
    "512x512x20": {"model": "sdxl", "width": 512, "height": 512, "steps": 20},
}


def estimate(stack: Stack, params: dict[str, Any], count: int = PANELS) -> dict[str, Any]:
    body = {"params": params, "images": [{"prompt": f"estimate {n}"} for n in range(count)]}
    response = stack.session.post(
        f"{stack.web_url}/api/v1/batches/estimate/", json=body, timeout=30
    )
    response.raise_for_status()
    return dict(response.json())


def run(stack: Stack, params: dict[str, Any], count: int, prefix: str) -> dict[str, Any]:
    """Submit, wait until it ends, and return the finished batch (it must complete)."""
    batch = stack.submit(count, prefix=prefix, params=params)
    row = stack.wait_terminal(batch["id"], timeout=300)
    if row["status"] != "completed":
        raise RuntimeError(f"batch {batch['id']} ended {row['status']}")
    response = stack.session.get(f"{stack.web_url}/api/v1/batches/{batch['id']}/", timeout=30)
    response.raise_for_status()
    return dict(response.json())


def ratio(actual: Any, expected: Any) -> float:
    return float(Decimal(str(actual)) / Decimal(str(expected)))


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={
            "workers": WORKERS,
            "latency": LATENCY,
            "jitter": JITTER,
            "latency_scale": "pixels",
        }
    )
    with Stack(config) as stack:
        catalogue = {"768x768x25": estimate(stack, HISTORY)}
        catalogue |= {name: estimate(stack, params) for name, params in OTHERS.items()}
        first = run(stack, HISTORY, PANELS, "first")
        run(stack, HISTORY, 50 - PANELS, "history")
        measured = {name: estimate(stack, params) for name, params in OTHERS.items()}
        other_model = estimate(stack, {**HISTORY, "model": "flux-dev"})
        actual = {name: run(stack, params, PANELS, name) for name, params in OTHERS.items()}
        actual["768x768x25"] = first

    rows: list[tuple[str, Any, str, str]] = []
    figures: dict[str, Any] = {"panels_per_batch": PANELS, "history_panels": 50}
    for name, answer in catalogue.items():
        value = ratio(actual[name]["actual_cost"], answer["expected_cost"])
        figures[f"catalogue_{name}_actual_over_expected"] = round(value, 3)
        ok = verdict(0.5 <= value <= 2)
        rows.append((f"no history, {name}: actual / catalogue", value, "0.5 - 2", ok))
    for name, answer in measured.items():
        basis = answer["basis"]
        value = ratio(actual[name]["actual_cost"], answer["expected_cost"])
        reserved = ratio(actual[name]["estimated_cost"], actual[name]["actual_cost"])
        figures[f"measured_{name}_actual_over_expected"] = round(value, 4)
        figures[f"measured_{name}_reserved_over_actual"] = round(reserved, 4)
        figures[f"measured_{name}_basis"] = basis
        rows += [
            (f"after 50 panels, {name}: basis", f"{basis['kind']} ({basis['samples']})", "measured",
             verdict(basis["kind"] == "measured")),
            (f"after 50 panels, {name}: actual / expected", value, "0.90 - 1.10",
             verdict(0.9 <= value <= 1.1)),
            (f"after 50 panels, {name}: reserved / actual", reserved, "", ""),
        ]  # fmt: skip
    allowance = measured["1024x1024x30"]["basis"]["models"]["sdxl"]["allowance_rate"]
    figures["measured_allowance_rate"] = allowance
    figures["other_model_basis"] = other_model["basis"]["kind"]
    rows += [
        ("measured retry allowance (0 failures)", allowance, "0.05 floor", ""),
        ("flux-dev, no history of its own: basis", other_model["basis"]["kind"], "catalogue",
         verdict(other_model["basis"]["kind"] == "catalogue")),
    ]  # fmt: skip
    report("estimates", rows, figures)
    return figures


if __name__ == "__main__":
    main()
