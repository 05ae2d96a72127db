"""A TCP proxy that can cut a link: `proxy.py LISTEN_PORT:TARGET_PORT ...`.

SIGUSR1 cuts every link (open connections are closed, new ones refused at once);
SIGUSR2 restores them. The fault matrix puts one in front of one node's NATS servers,
so that node loses NATS while its clients still reach it.
"""

import asyncio
import signal
import sys

cut = False
open_links = set()


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def serve(target_port, client_reader, client_writer):
    if cut:
        client_writer.close()
        return
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    link = (client_writer, writer)
    open_links.add(link)
    try:
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
    finally:
        open_links.discard(link)


def set_cut(value):
    global cut
    cut = value
    if value:
        for client_writer, writer in list(open_links):
            client_writer.transport.abort()
            writer.transport.abort()


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, set_cut, True)
    loop.add_signal_handler(signal.SIGUSR2, set_cut, False)
    servers = []
    for pair in sys.argv[1:]:
        listen, target = (int(p) for p in pair.split(":"))
        servers.append(
            await asyncio.start_server(
                lambda r, w, t=target: serve(t, r, w), "127.0.0.1", listen
            )
        )
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
