"""A TCP relay that puts a laptop-to-cluster link between hpcnn and the test bed: every byte is
held ``--delay-ms`` in each direction (25 ms each way by default: a 50 ms round trip), and every
connection's bytes are counted.

Loopback SSH answers in microseconds, which hides what a user pays per round trip; a command
that needs one round trip more than ``ssh`` does looks as fast on loopback and is not on a real
link. The relay runs as its own process, so that its work never competes for the GIL of a
benchmark that times Python code in-process. For each connection it logs
``open ID PORT`` and then ``close ID PORT UP DOWN`` (``PORT``: the relay's own port towards the
server, which sshd's log names, so logins and sessions can be counted per connection; ``UP``:
bytes client to server, ``DOWN``: server to client).

Standalone: ``python bench/tcp_proxy.py --to 127.0.0.1:2222 --delay-ms 25 --log FILE`` prints
the port it listens on (127.0.0.1) and serves until killed. Benchmarks use ``Relay``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CHUNK = 1 << 16


@dataclass(frozen=True)
class Connection:
    """One relayed connection as the log tells it."""

    port: int
    up: int
    down: int


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                 counted: list[int]) -> None:
    """Copy one direction, each chunk delivered ``delay`` seconds after it arrived (latency
    without a bandwidth limit: chunks queue, the clock of each is its own)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            counted[0] += len(data)
            writer.write(data)
            await writer.drain()
    except OSError:
        return
    finally:
        reading.cancel()


async def _serve(target: tuple[str, int], delay: float, log: Path) -> None:
    ids = itertools.count(1)

    def note(line: str) -> None:
        with log.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        cid = next(ids)
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = server_w.get_extra_info("sockname")[1]
        note(f"open {cid} {port}")
        up, down = [0], [0]
        await asyncio.gather(_carry(client_r, server_w, delay, up),
                             _carry(server_r, client_w, delay, down))
        for w in (client_w, server_w):
            w.close()
        note(f"close {cid} {port} {up[0]} {down[0]}")

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class Relay:
    """The relay as a child process: ``with Relay(host, port, delay_ms, log) as r`` gives
    ``r.port`` to connect to; ``r.mark()`` and ``r.since(mark)`` tell the connections (their
    bytes, their server-side ports) that were opened in between."""

    def __init__(self, host: str, port: int, delay_ms: float, log: Path) -> None:
        self.log = log
        log.write_text("")
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--to", f"{host}:{port}", "--delay-ms", str(delay_ms),
             "--log", str(log)], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._proc.terminate()
        self._proc.wait()

    def mark(self) -> int:
        return self.log.stat().st_size

    def since(self, mark: int, timeout: float = 10.0) -> list[Connection]:
        """The connections opened after ``mark``, once every one of them has closed (an ssh
        master ends a moment after the command that told it to)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log.open(encoding="utf-8") as handle:
                handle.seek(mark)
                lines = [line.split() for line in handle.read().splitlines()]
            opened = {f[1] for f in lines if f[0] == "open"}
            closed = [f for f in lines if f[0] == "close" and f[1] in opened]
            if len(closed) == len(opened) or time.monotonic() > deadline:
                return [Connection(int(f[2]), int(f[3]), int(f[4])) for f in closed]
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="added in each direction")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    asyncio.run(_serve((host, int(port)), args.delay_ms / 1000, args.log))


if __name__ == "__main__":
    main()
