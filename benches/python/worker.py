"""Drain one queue with the Python original, async-worker 0.20.2, as a user writes it.

Usage: worker.py <amqp-url> <queue> <messages> <bulk> <prefetch>

The e2e bench (crates/amqp/benches/e2e.rs, arm `py-bulk1` / `py-bulk256`) runs this as a
child process, like its own drain arms, and reads the last line it prints:

    RESULT messages=N secs=S cpu=C rss_kib=K

- `secs`: from the first delivery to the last ack and the close of the consumer's channel
  and connection (the broker answers a close after it has processed every ack before it),
  the same span the Rust arms measure;
- `cpu`: this process's user + system CPU seconds over the same span (os.times);
- `rss_kib`: its peak RSS (getrusage ru_maxrss, KiB).

The handler is a no-op `async def handler(messages)` on an `@app.amqp.consume` route with
`AMQPRouteOptions(bulk_size=bulk)` and `AMQPConnection(prefetch=prefetch)`; the original acks
every message of a batch after the handler returns (`basic.ack`, one per message). The only
addition is a counter around `RabbitMQMessage.process_success` (the original's ack step) so
the run ends once the N-th ack is written, and a one-shot wrapper around the bucket's `put`
notes the first delivery.
"""

import asyncio
import os
import resource
import socket
import sys
import time
from urllib.parse import unquote, urlparse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The original always starts its HTTP server (default 127.0.0.1:8080): give it a free port,
# before asyncworker reads its settings at import time.
os.environ["ASYNCWORKER_HTTP_PORT"] = str(free_port())
os.environ.setdefault("ASYNCWORKER_LOGLEVEL", "ERROR")

from asyncworker import App  # noqa: E402
from asyncworker.bucket import Bucket  # noqa: E402
from asyncworker.connections import AMQPConnection  # noqa: E402
from asyncworker.rabbitmq.message import RabbitMQMessage  # noqa: E402
from asyncworker.routes import AMQPRouteOptions  # noqa: E402


def cpu_secs() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    url, queue, n, bulk, prefetch = sys.argv[1:6]
    n, bulk, prefetch = int(n), int(bulk), int(prefetch)
    u = urlparse(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    conn = AMQPConnection(
        hostname=u.hostname,
        port=u.port or 5672,
        username=unquote(u.username or "guest"),
        password=unquote(u.password or "guest"),
        prefetch=prefetch,
    )
    app = App(connections=[conn])
    state = {"first": None, "seen": 0, "acked": 0, "channel": None}
    done = asyncio.Event()

    original = RabbitMQMessage.process_success

    async def counted(self):
        result = await original(self)
        state["acked"] += 1
        if state["acked"] == n:
            done.set()
        return result

    RabbitMQMessage.process_success = counted

    # The first delivery: the first message put into the route's bucket. The wrapper takes
    # itself out at once, so it costs nothing per message after that.
    put = Bucket.put

    def first_put(self, item):
        state["first"] = (time.perf_counter(), cpu_secs())
        state["channel"] = item._amqp_message.channel
        Bucket.put = put
        return put(self, item)

    Bucket.put = first_put

    # A partial last batch waits for the clock flush (1 s); the bench's message counts are
    # multiples of 256, so every batch fills.
    @app.amqp.consume([queue], vhost=vhost, options=AMQPRouteOptions(bulk_size=bulk, bulk_flush_interval=1))
    async def handler(messages):
        state["seen"] += len(messages)

    async def finish(app):
        await done.wait()
        channel = state["channel"]
        await channel.close()
        await channel.protocol.close()
        end = (time.perf_counter(), cpu_secs())
        start = state["first"]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"RESULT messages={n} secs={end[0] - start[0]} cpu={end[1] - start[1]} rss_kib={rss}",
            flush=True,
        )
        # The original's shutdown neither cancels its consumers nor stops its flush clock:
        # leave at once, the measurement is done.
        os._exit(0)

    async def start_finish(app):
        asyncio.get_event_loop().create_task(finish(app))

    app.run_on_startup(start_finish)
    app.run()


if __name__ == "__main__":
    main()
