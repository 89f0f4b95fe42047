import os
from pathlib import Path

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


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
        child = self.start_cpu_engine_child()
        try:
            self.stdout.write(f"Tollgate listening on http://{host}:{port}/  (dashboards: /dashboards/, admin: /admin/)")
            uvicorn.run("tollgate.asgi:application", host=host, port=port, workers=workers, lifespan="off",
                        log_level=settings.UVICORN_LOG_LEVEL, access_log=settings.DEBUG,
                        timeout_keep_alive=settings.TOLLGATE_HTTP_KEEP_ALIVE_S)
        finally:
            if child is not None:
                child.stop()

    def start_cpu_engine_child(self):
        """TOLLGATE_CPU_ENGINE_PROCESS=separate: the CPU engine runs in a child worker process, not in here
        (serving/engines/child.py says why). Not when a worker URL is configured or no CPU engine runs."""
        mode = settings.TOLLGATE_CPU_ENGINE_PROCESS
        if mode not in ("separate", "in-process"):
            raise CommandError(f"TOLLGATE_CPU_ENGINE_PROCESS={mode!r}: expected 'separate' or 'in-process'")
        if mode == "in-process" or settings.TOLLGATE_ENGINE != "cpu" or settings.TOLLGATE_CPU_ENGINE_URL:
            return None
        from serving.engines.child import EngineChild

        child = EngineChild(Path(settings.BASE_DIR) / "manage.py", out=self.stdout,
                            embeddings=settings.TOLLGATE_EMBEDDINGS_IN_PROCESS)
        try:
            child.start()
        except RuntimeError as exc:
            child.stop()
            raise CommandError(str(exc)) from exc
        # This process (and uvicorn's worker processes, which read the environment) reach the engine there.
        settings.TOLLGATE_CPU_ENGINE_URL = os.environ["TOLLGATE_CPU_ENGINE_URL"] = child.url
        self.stdout.write(f"CPU engine worker (pid {child.process.pid}) on {child.url}")
        return child
