"""Raw prompt: a /v1/completions request reaches the engine as its prompt, not as chat messages.

Runs after route. The route stage counts and prices the prompt as a chat
request (``TextCompletionRequest.to_chat_messages``); the generate stage
builds a chat ``GenerationRequest``. Engines and workers already serve a raw
prompt (``GenerationRequest.prompt``: no chat template), so this stage hands
generate each route option's engine as a view that sets the prompt on every
try it starts, retries on other replicas included.

Also refuses ``logprobs``: the gateway's completion answer has no place for
them yet, and a parameter is never ignored.
"""

from __future__ import annotations

import dataclasses

from .. import errors
from ..engines.base import GenerationRequest
from ..flow.context import RequestContext, RouteOption
from ..pools import DeploymentRuntime


class RawPromptDeployment(DeploymentRuntime):
    """A model's deployment (same pool, same replicas) that sends ``prompt`` instead of chat messages."""

    def __init__(self, deployment: DeploymentRuntime, prompt: str):
        # A view, not a new deployment: the pool's admission queue, replicas and their state are shared.
        self.__dict__.update(deployment.__dict__)
        self.prompt = prompt

    def stream(self, request: GenerationRequest, exclude: frozenset[str] = frozenset()):
        return super().stream(dataclasses.replace(request, prompt=self.prompt), exclude)


def _with_prompt(option: RouteOption, prompt: str) -> RouteOption:
    if not isinstance(option.engine, DeploymentRuntime):
        raise TypeError(f"{type(option.engine).__name__} cannot take a raw prompt")
    return RouteOption(option.estimate, RawPromptDeployment(option.engine, prompt))


def run(ctx: RequestContext) -> None:
    if ctx.request.logprobs is not None:
        raise errors.UnsupportedParameter("logprobs", ctx.request.model)
    prompt, route = ctx.request.prompt_text, ctx.route
    ctx.route = dataclasses.replace(route, primary=_with_prompt(route.primary, prompt),
                                    alternatives=tuple(_with_prompt(option, prompt) for option in route.alternatives))
