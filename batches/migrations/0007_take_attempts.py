from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0006_authors_tools"),
    ]

    operations = [
        migrations.AddField(
            model_name="imageversion",
            name="last_attempt",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
