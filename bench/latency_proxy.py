"""A TCP relay that delays every chunk by a fixed time in each direction, keeping order.

Used by the benchmark to put a real network's latency between `fab` and each test host's sshd:
    proxy = LatencyProxy(listen_port, ("10.213.20.2", 22), delay_ms=25); proxy.start(); ...; proxy.stop()
It counts the TCP connections it relayed (= SSH connections opened by the client).
"""
from __future__ import annotations

import asyncio
import threading
import time


class LatencyProxy:
    def __init__(self, listen_port: int, target: tuple[str, int], delay_ms: float, listen_host: str = "127.0.0.1"):
        self.listen = (listen_host, listen_port)
        self.target = target
        self.delay = delay_ms / 1000.0
        self.connections = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def receive():
            while True:
                data = await reader.read(65536)
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        async def deliver():
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    try:
                        writer.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(receive(), deliver())
        except (ConnectionError, OSError):
            pass

    async def _handle(self, client_r, client_w) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        for w in (client_w, server_w):
            w.close()

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, *self.listen))
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> "LatencyProxy":
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)
        return self

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loop.stop()

    def stop(self) -> None:
        if self.loop and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        if self.thread:
            self.thread.join(timeout=5)
        if self.loop and not self.loop.is_running():
            self.loop.close()
