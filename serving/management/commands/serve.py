import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve Tollgate (gateway, dashboards, admin) on uvicorn."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--workers", type=int, default=1,
                            help="processes; must be 1 with an embedded (chdb://) ClickHouse")

    def handle(self, *args, host, port, workers, **options):
        if workers > 1 and settings.CLICKHOUSE_DSN.startswith("chdb://"):
            self.stderr.write("Embedded ClickHouse can be opened by one process only; using 1 worker.")
            workers = 1
        self.stdout.write(f"Tollgate listening on http://{host}:{port}/  (dashboards: /dashboards/, admin: /admin/)")
        uvicorn.run("tollgate.asgi:application", host=host, port=port, workers=workers, lifespan="off",
                    log_level=settings.UVICORN_LOG_LEVEL, access_log=settings.DEBUG,
                    timeout_keep_alive=settings.TOLLGATE_HTTP_KEEP_ALIVE_S)
