"""Each batch's event counter gets a row of its own (BatchSeq): taking a seq no longer locks
the Batch row, which the money paths lock on every pass."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0007_take_attempts"),
    ]

    operations = [
        migrations.CreateModel(
            name="BatchSeq",
            fields=[
                (
                    "batch",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="event_seq",
                        serialize=False,
                        to="batches.batch",
                    ),
                ),
                ("seq", models.PositiveBigIntegerField(default=0)),
            ],
        ),
        # Each batch's counter moves to its row; back again when migrating backwards (by then
        # RemoveField's reverse has added the column back).
        migrations.RunSQL(
            "INSERT INTO batches_batchseq (batch_id, seq) "
            "SELECT id, seq FROM batches_batch WHERE seq > 0",
            reverse_sql="UPDATE batches_batch AS b SET seq = s.seq "
            "FROM batches_batchseq AS s WHERE s.batch_id = b.id",
        ),
        migrations.RemoveField(
            model_name="batch",
            name="seq",
        ),
    ]
