"""Each panel records the RunPod endpoint that renders it (one endpoint per model)."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def endpoint_of_batch(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Until now a batch ran on one endpoint: its panels ran where it did.
    Batch = apps.get_model("batches", "Batch")
    ImageJob = apps.get_model("batches", "ImageJob")
    ImageJob.objects.filter(endpoint_id="").update(
        endpoint_id=Subquery(
            Batch.objects.filter(pk=OuterRef("batch_id")).values("endpoint_id")[:1]
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0004_estimates_learned"),
    ]

    operations = [
        migrations.AddField(
            model_name="imagejob",
            name="endpoint_id",
            field=models.CharField(blank=True, default="", max_length=100),
        ),
        migrations.RunPython(endpoint_of_batch, migrations.RunPython.noop),
    ]
