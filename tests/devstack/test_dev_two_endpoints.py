"""`make dev` routes each model to its endpoint: a batch mixing sdxl and flux-dev lands on the
two endpoint ids the dev stack's emulator serves (scripts/dev.sh sets RUNPOD_ENDPOINTS)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import wait_for
from tests.devstack.test_make_dev import DevStack, ctrl_c, data_dir, dev_stack  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def test_a_two_model_batch_on_the_dev_stack_lands_on_two_endpoints(
    dev_stack: DevStack,  # noqa: F811
) -> None:
    headers = {"Authorization": f"Token {dev_stack.token}"}
    models = ["sdxl", "flux-dev", "flux-dev", "sdxl-turbo"]
    body = {
        "title": "two endpoints",
        "params": {"width": 128, "height": 128, "steps": 4},
        "images": [
            {"prompt": f"panel {n}", "params": {"model": model}} for n, model in enumerate(models)
        ],
    }
    created = requests.post(
        f"{dev_stack.web}/api/v1/batches/", json=body, headers=headers, timeout=10
    )
    assert created.status_code == 202, created.text

    def done() -> dict[str, Any] | None:
        batch = requests.get(
            f"{dev_stack.web}/api/v1/batches/{created.json()['id']}/", headers=headers, timeout=10
        ).json()
        return batch if batch["status"] in ("completed", "partial", "failed") else None

    batch = wait_for(done, timeout=90, interval=0.5)
    stats = requests.get(
        f"http://127.0.0.1:{dev_stack.ports['EMULATOR']}/_emulator/stats", timeout=10
    ).json()

    assert batch["status"] == "completed"
    assert stats["endpoints"]["comicgen-local"]["COMPLETED"] == 2
    assert stats["endpoints"]["comicgen-local-flux"]["COMPLETED"] == 2
    assert ctrl_c(dev_stack.process) == 0
