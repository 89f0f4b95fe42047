"""Fault-injecting proxies: HTTP in front of a real engine worker, TCP in front of a real store.

``FaultyProxy`` stands in for what a real fleet does to a gateway and cannot be produced
on demand here: a worker that answers 503 while it is overloaded, one that
resets connections before answering, one that dies in the middle of a stream.
Everything it does not break it forwards unchanged to the real worker
process behind it (the CPU engine's `serve_engine`), so the answers the
gateway gets are real. Health checks always pass through, so tests decide
when a replica looks healthy.

``TcpProxy`` sits between the gateway and a real PostgreSQL or Redis: ``down()``
resets every open connection and refuses new ones, as a crashed or
partitioned store does; ``up()`` lets connections through again.
"""

from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import ClientSession, web

from tests.conftest import free_port

PASS, OVERLOADED, RESET, CUT_AFTER_FIRST_TOKEN = "pass", "503", "reset", "cut"


class FaultyProxy:
    def __init__(self, target_url: str):
        self.target = target_url.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = PASS
        self.fail_next: int | None = None  # apply the mode to this many more generations, then pass; None: all
        self.generations = 0  # generation requests that reached the proxy, whatever it did with them
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"faulty-proxy-{self.port}", daemon=True)

    def start(self) -> "FaultyProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._session = self._loop.run_until_complete(_new_session())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._session.close())
        self._loop.run_until_complete(runner.cleanup())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        generation = request.path.endswith("/completions")
        mode = self.mode if generation else PASS
        if generation:
            self.generations += 1
            if self.fail_next is not None:
                mode = mode if self.fail_next > 0 else PASS
                self.fail_next = max(0, self.fail_next - 1)
        if mode == OVERLOADED:
            return web.json_response({"error": {"message": "server overloaded", "type": "server_error",
                                                "param": None, "code": "overloaded"}}, status=503)
        if mode == RESET:
            request.transport.close()  # the connection drops before any answer
            return web.Response()
        body = await request.read()
        async with self._session.request(request.method, self.target + request.path_qs, data=body,
                                         headers={"Content-Type": request.content_type}) as upstream:
            response = web.StreamResponse(status=upstream.status,
                                          headers={"Content-Type": upstream.headers.get("Content-Type", "")})
            await response.prepare(request)
            async for line in upstream.content:
                await response.write(line)
                if mode == CUT_AFTER_FIRST_TOKEN and _has_text(line):
                    request.transport.close()  # the worker "dies" after its first token reached the gateway
                    return response
            await response.write_eof()
            return response


async def _new_session() -> ClientSession:
    return ClientSession()


def _has_text(line: bytes) -> bool:
    if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
        return False
    try:
        chunk = json.loads(line[5:])
    except ValueError:
        return False
    return any((c.get("delta") or {}).get("content") or c.get("text") for c in chunk.get("choices") or ())


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        self.up()
        return self

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def up(self) -> None:
        self._call(self._listen())

    def down(self) -> None:
        self._call(self._refuse())

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()  # RST: what a crashed server's peer sees
        self._open.clear()

    async def _pipe(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._open.update((client_writer, server_writer))

        async def copy(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                self._open.discard(writer)

        await asyncio.gather(copy(client_reader, server_writer), copy(server_reader, client_writer))
