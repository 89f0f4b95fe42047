"""A gateway whose models all run on remote workers counts prompts without loading the CPU engine.

Every chat request's prompt is counted before it runs (the context window, the budget hold, token
optimization), with the CPU engine's tokenizer. That tokenizer needs only the ``tokenizers`` library; the
engine beside it needs torch, which took over a second to import on the first request and stayed in the
process's memory from then on. Run in a fresh interpreter, since the test process has torch already.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import django
django.setup()
import serving.views  # the /v1 app, as `manage.py serve` mounts it
from serving.engines.base import ChatMessage
from serving.engines.remote import RemoteEngine
from serving.stages.optimize_tokens import count_tokens

messages = (ChatMessage("system", "Answer briefly."), ChatMessage("user", "How many tokens is this?"))
worker = RemoteEngine("http://127.0.0.1:9", ["vllm-model"])
print(json.dumps({"route": worker.count_prompt_tokens("vllm-model", messages),
                  "optimize": count_tokens(messages),
                  "torch": "torch" in sys.modules}))
"""


def test_counting_a_prompt_for_a_remote_worker_does_not_import_torch():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tollgate.settings", "TOLLGATE_ENGINE": "none"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False
    # The count is the template's, the same through both callers (and not a placeholder).
    from serving.engines.base import ChatMessage
    from serving.engines.cpu.tokenizer import ChatTokenizer

    expected = len(ChatTokenizer().encode_chat(
        (ChatMessage("system", "Answer briefly."), ChatMessage("user", "How many tokens is this?"))))
    assert seen["route"] == seen["optimize"] == expected
