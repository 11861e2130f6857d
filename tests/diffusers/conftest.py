"""The diffusers worker's tests: run by scripts/test.sh's second pytest run, in .venv-worker
(torch, diffusers, transformers), which the web app's .venv never has. There, this folder's
conftest is the only one loaded (--confcutdir): no Django, no database.

In the web app's venv these files are not collected at all (the first run covers the rest)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    # Two cores shared with other processes: one thread per tiny model is several times faster
    # than torch's default of one per core fighting over them. Set before torch is imported,
    # and inherited by the worker and emulator processes the tests start.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Nothing here may reach a hub: a test that tried would fail instead of downloading.
    os.environ["HF_HUB_OFFLINE"] = "1"

    @pytest.fixture(scope="session")
    def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A tiny random SDXL pipeline saved in diffusers' layout (built once per run)."""
        from tests.diffusers.tiny_pipeline import build_tiny_sdxl

        return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))

    @pytest.fixture
    def diffusers_env(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Iterator[Any]:
        """IMAGE_SOURCE=diffusers on the tiny model, with the handler's loaded source
        forgotten afterwards (another test may point it at another model)."""
        from worker import handler

        monkeypatch.setenv("IMAGE_SOURCE", "diffusers")
        monkeypatch.setenv("DIFFUSERS_MODEL", str(tiny_model))
        yield handler
        handler.IMAGE_SOURCES.pop("diffusers", None)
