import importlib.util
import os
import shutil
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Run an engine worker that speaks vLLM's OpenAI-compatible API and /metrics: "
            "--engine cpu (Tollgate's CPU engine) or --engine vllm --model PATH (needs the vllm extra and a GPU).")

    def add_arguments(self, parser):
        parser.add_argument("--engine", choices=["cpu", "vllm"], default="cpu")
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.SERVE_ENGINE_PORT)
        parser.add_argument("--models", default="tollgate-mini,tollgate-small,tollgate-large",
                            help="cpu: comma-separated tollgate-* models to serve")
        parser.add_argument("--max-num-seqs", type=int, default=settings.TOLLGATE_CPU_MAX_NUM_SEQS)
        parser.add_argument("--max-num-batched-tokens", type=int,
                            default=settings.TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS)
        parser.add_argument("--no-prefix-caching", action="store_true")
        parser.add_argument("--embeddings", action="store_true",
                            help="cpu: also serve all-minilm-l6-v2 on /v1/embeddings")
        parser.add_argument("--preload", action="store_true", help="cpu: build the models before listening")
        parser.add_argument("--model", help="vllm: model path or name")
        parser.add_argument("vllm_args", nargs="*", help="vllm: extra arguments passed to `vllm serve`")

    def handle(self, *args, engine, host, port, **options):
        if engine == "vllm":
            self.exec_vllm(host, port, options["model"], options["vllm_args"])
        self.serve_cpu(host, port, options)

    def exec_vllm(self, host, port, model, extra):
        if not model:
            raise CommandError("--engine vllm needs --model PATH")
        if importlib.util.find_spec("vllm") is None:
            raise CommandError("vLLM is not installed here. On a GPU host: pip install 'tollgate[vllm]' "
                               "(see docs/deployment.md). The CPU engine runs with --engine cpu.")
        executable = shutil.which("vllm")
        argv = ([executable, "serve"] if executable else [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"])
        argv += [model, "--host", host, "--port", str(port), *extra]
        self.stdout.write("exec " + " ".join(argv))
        os.execv(argv[0], argv)

    def serve_cpu(self, host, port, options):
        import uvicorn

        from serving.engines.cpu.engine import CpuEngine
        from serving.engines.worker import build_worker_app

        models = [m.strip() for m in options["models"].split(",") if m.strip()]
        engine = CpuEngine(models=models, max_num_seqs=options["max_num_seqs"],
                           max_num_batched_tokens=options["max_num_batched_tokens"],
                           enable_prefix_caching=not options["no_prefix_caching"],
                           prefix_cache_blocks=settings.TOLLGATE_CPU_PREFIX_CACHE_BLOCKS,
                           threads=settings.TOLLGATE_CPU_ENGINE_THREADS)
        if options["preload"]:
            for m in models:
                engine.load(m)
        embedder = None
        if options["embeddings"]:
            from serving.engines.embeddings import MiniLMEmbedder

            embedder = MiniLMEmbedder(max_batch_inputs=settings.TOLLGATE_EMBEDDING_MAX_BATCH,
                                      max_wait_ms=settings.TOLLGATE_EMBEDDING_MAX_WAIT_MS)
        app = build_worker_app(engine, embedder)
        self.stdout.write(f"CPU engine worker for {', '.join(models)} on http://{host}:{port}/v1", ending="\n")
        self.stdout.flush()
        uvicorn.run(app, host=host, port=port, log_level=settings.SERVE_ENGINE_LOG_LEVEL,
                    access_log=False, timeout_graceful_shutdown=2)
