import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Pool",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.SlugField(help_text="Recorded on every usage row (e.g. interactive).", max_length=40,
                                          unique=True)),
                ("kind", models.CharField(choices=[("interactive", "Interactive (low latency)"),
                                                   ("batch", "Batch (throughput)"), ("embedding", "Embedding")],
                                          default="interactive", max_length=20)),
                ("max_in_flight_per_replica", models.PositiveIntegerField(
                    default=32,
                    help_text="Requests one replica runs at once (its max_num_seqs); more wait in the pool's queue.")),
                ("max_queue", models.PositiveIntegerField(
                    default=256,
                    help_text="Requests that may wait for a slot; past this the gateway answers 429 + Retry-After.")),
                ("max_batch_wait_ms", models.FloatField(
                    default=2.0,
                    help_text="How long an embedding batch waits to fill (interactive: small, batch: larger).")),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.CreateModel(
            name="Deployment",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("model", models.CharField(help_text="Catalog model name, e.g. tollgate-small.", max_length=100,
                                           unique=True)),
                ("enabled", models.BooleanField(default=True)),
                ("pool", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="deployments",
                                           to="serving.pool")),
            ],
            options={"ordering": ["model"]},
        ),
        migrations.CreateModel(
            name="Replica",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("url", models.URLField(blank=True,
                                        help_text="Worker base URL (http://host:port); blank = in-process engine.")),
                ("enabled", models.BooleanField(default=True)),
                ("deployment", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                                 related_name="replicas", to="serving.deployment")),
            ],
            options={"ordering": ["deployment", "id"]},
        ),
        migrations.AddConstraint(
            model_name="replica",
            constraint=models.UniqueConstraint(fields=("deployment", "url"), name="one_replica_per_url"),
        ),
    ]
