"""Serving a Flask app: waitress by default, Flask's development server with `server=dev`.

Why waitress: a production WSGI server in pure Python that runs the same on Linux, macOS and Windows,
with a thread pool, so progress streams (SSE, one thread each while open), /healthz and 503s answer while
the one worker renders; it also tells the app when a client has gone (`waitress.client_disconnected`),
which is how a sync `POST /generate` whose client left gets cancelled. Flask's own server says "do not
use it in production" and has neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from ldm.errors import ConfigError, expect, is_int

SERVERS = ("waitress", "dev")


def make_waitress(app: Flask, host: str, port: int, threads: int) -> Any:
    """A waitress server bound now (port 0: a free one, `server.effective_port`); `.run()` serves."""
    from waitress import create_server

    # channel_request_lookahead > 0 makes waitress watch the socket while the app runs, so a client that
    # goes away is seen (waitress.client_disconnected) instead of only when its answer is written
    return create_server(app, host=host, port=port, threads=threads, channel_request_lookahead=1, ident="waitress")


SPARE_THREADS = 2  # for /healthz, job status and the page while every stream and sync request is open


def check_server(server: str, threads: int, streams: int = 0, queue_size: int = 0) -> None:
    """The server is known, and its threads cover the long requests (every open stream, and a sync request
    for each job the queue can hold) with spares left for short ones."""
    expect(server in SERVERS, "server", server, f"one of {', '.join(SERVERS)}", ConfigError)
    needed = streams + queue_size + 1 + SPARE_THREADS
    expect(
        is_int(threads) and threads >= max(needed, 2),
        "server_threads",
        threads,
        f"an integer ≥ {needed} (limits.streams={streams} + queue_size={queue_size} + 1 running job + "
        f"{SPARE_THREADS} spares for /healthz and job status)",
        ConfigError,
    )


def serve(app: Flask, host: str, port: int, server: str, threads: int, load: Callable[[], None]) -> None:
    """Listen at once, run `load()` (the model) here meanwhile, then serve until interrupted.

    Why listen first: loading SD1.5 takes a while, and /healthz can say `model_loaded: false` meanwhile.
    An error in `load()` closes the server and propagates (the entry point prints it).
    """
    if server == "dev":
        from werkzeug.serving import make_server

        httpd = make_server(host, port, app, threaded=True)
        run, stop, bound = httpd.serve_forever, httpd.shutdown, httpd.port
    else:
        httpd = make_waitress(app, host, port, threads)
        run, stop, bound = httpd.run, httpd.close, httpd.effective_port
    thread = threading.Thread(target=run, name=f"{server}-server", daemon=True)
    thread.start()
    how = f"waitress, {threads} threads" if server == "waitress" else "Flask's development server"
    print(f"listening on http://{host}:{bound} ({how}); loading the model", flush=True)
    try:
        load()
        print("model loaded: ready", flush=True)
        thread.join()
    except BaseException:
        stop()
        raise
