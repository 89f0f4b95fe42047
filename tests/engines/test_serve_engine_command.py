"""`manage.py serve_engine --engine vllm` where vLLM is not installed (no GPU here) stops with a clear error."""

import importlib.util

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_engine_vllm_without_vllm_says_how_to_install_it():
    with pytest.raises(CommandError, match=r"vLLM is not installed.*tollgate\[vllm\]"):
        call_command("serve_engine", "--engine", "vllm", "--model", "/models/any")


def test_serve_engine_vllm_needs_a_model():
    with pytest.raises(CommandError, match="--model"):
        call_command("serve_engine", "--engine", "vllm")
