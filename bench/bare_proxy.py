"""The floor of the gateway's own stack: a proxy that does nothing but pass chat completions on.

Same parts as ``manage.py serve``'s ``/v1`` path, and nothing else: uvicorn (httptools, uvloop, one
process) running a Starlette route that reads the body, posts it to the upstream on one pooled aiohttp
session (no cookie jar, as the gateway's worker client), and returns the upstream's status and bytes
(streamed answers are passed on as they are read). No key, no budget, no ledger, no spans, no JSON
parsed. ``bench/gateway_overhead.py --bare-proxy`` and ``bench/gateway_streaming.py --bare-proxy`` time it
beside the gateway: what the gateway spends above this floor is what its features cost.

    .venv/bin/python bench/bare_proxy.py --port 8301 --upstream http://127.0.0.1:8300
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build_app(upstream: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        if not sessions:  # made on the server's own event loop, on the first request
            sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
                                                  cookie_jar=aiohttp.DummyCookieJar()))
        return sessions[0]

    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        answer = await session().post(f"{upstream}/v1/chat/completions", data=body,
                                      headers={"Content-Type": "application/json"})
        if answer.content_type != "text/event-stream":
            try:
                return Response(await answer.read(), status_code=answer.status, media_type="application/json")
            finally:
                answer.release()

        async def passed_on():
            try:
                while data := await answer.content.readany():
                    yield data
            finally:
                answer.release()

        return StreamingResponse(passed_on(), status_code=answer.status, media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(b"", status_code=200)

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/health", health)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the upstream's base URL")
    args = ap.parse_args()
    uvicorn.run(build_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, lifespan="off", timeout_keep_alive=75)


if __name__ == "__main__":
    main()
