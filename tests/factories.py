from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import factory
from django.contrib.auth import get_user_model
from django.utils.timezone import now

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"author{n}")
    password = factory.django.Password("pw")


PARAMS = {"model": "sdxl", "width": 512, "height": 512, "steps": 20, "guidance": 7.0}


class BatchFactory(factory.django.DjangoModelFactory):
    """A batch in any status: `BatchFactory(running=True)`, `BatchFactory(cancelling=True)`..."""

    class Meta:
        model = Batch
        skip_postgeneration_save = True

    user = factory.SubFactory(UserFactory)
    title = factory.Sequence(lambda n: f"Chapter {n}")

    class Params:
        running = factory.Trait(status=BatchStatus.RUNNING, started_at=factory.LazyFunction(now))
        completed = factory.Trait(
            status=BatchStatus.COMPLETED,
            started_at=factory.LazyFunction(now),
            finished_at=factory.LazyFunction(now),
        )
        failed = factory.Trait(status=BatchStatus.FAILED, finished_at=factory.LazyFunction(now))
        cancelling = factory.Trait(
            status=BatchStatus.RUNNING,
            cancel_requested_at=factory.LazyFunction(now),
            cancel_reason="Cancelled by the user.",
        )


class ImageJobFactory(factory.django.DjangoModelFactory):
    """An image in any state of its attempt: `ImageJobFactory(submitted=True)` has attempt 1
    claimed with no job id yet, `running=True` a job on RunPod, `retrying=True` a failed
    attempt waiting out its backoff, and so on."""

    class Meta:
        model = ImageJob
        skip_postgeneration_save = True

    batch = factory.SubFactory(BatchFactory, running=True)
    index = factory.Sequence(lambda n: n)
    prompt = factory.Sequence(lambda n: f"panel {n}")
    seed = 7
    params = factory.LazyFunction(lambda: dict(PARAMS))

    class Params:
        submitted = factory.Trait(
            status=ImageStatus.SUBMITTED,
            attempts=1,
            hold=Decimal("0.004"),
            submitted_at=factory.LazyFunction(now),
        )
        on_runpod = factory.Trait(
            status=ImageStatus.SUBMITTED,
            attempts=1,
            hold=Decimal("0.004"),
            submitted_at=factory.LazyFunction(now),
            runpod_job_id=factory.Sequence(lambda n: f"job-{n}"),
        )
        running = factory.Trait(
            status=ImageStatus.RUNNING,
            attempts=1,
            hold=Decimal("0.004"),
            submitted_at=factory.LazyFunction(now),
            runpod_job_id=factory.Sequence(lambda n: f"job-{n}"),
        )
        retrying = factory.Trait(
            status=ImageStatus.RETRYING,
            attempts=1,
            error="RunPod job ended FAILED",
            next_attempt_at=factory.LazyFunction(lambda: now() + timedelta(seconds=30)),
        )
        completed = factory.Trait(
            status=ImageStatus.COMPLETED, attempts=1, finished_at=factory.LazyFunction(now)
        )
        failed = factory.Trait(
            status=ImageStatus.FAILED,
            attempts=4,
            error="gave up",
            finished_at=factory.LazyFunction(now),
        )
        cancelled = factory.Trait(
            status=ImageStatus.CANCELLED, error="Cancelled.", finished_at=factory.LazyFunction(now)
        )


def make_batch(**traits: Any) -> Batch:
    """BatchFactory, typed as the model it returns."""
    return cast(Batch, BatchFactory(**traits))


def make_image(**traits: Any) -> ImageJob:
    """ImageJobFactory, typed as the model it returns."""
    return cast(ImageJob, ImageJobFactory(**traits))
