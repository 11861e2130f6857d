from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from batches import services
from batches.api.serializers import BatchSubmitSerializer
from batches.models import Batch
from tests.factories import UserFactory


def make_batch(user: Any, prompts: list[str], **extra: Any) -> Batch:
    """A batch submitted through the real service (validated, priced, reserved)."""
    serializer = BatchSubmitSerializer(
        data={
            "title": extra.pop("title", "Chapter"),
            "params": {"width": 128, "height": 128, "steps": 4},
            "images": [{"prompt": prompt} for prompt in prompts],
            **extra,
        }
    )
    serializer.is_valid(raise_exception=True)
    return services.submit_batch(
        user, serializer.validated_data, serializer.resolved_images()
    ).batch


@pytest.fixture
def batch_factory() -> Callable[..., Batch]:
    return make_batch


@pytest.fixture
def author_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff_user(db: Any) -> Any:
    return UserFactory(username="staffer", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client
