"""The HTTP server behind `make run`: chalice local's gateway, served like a server.

`chalice local` serves with Python's `http.server` as it comes: a listen backlog of 5 (about
twenty simultaneous connects get resets) and headers and body written as two small packets,
which Nagle's algorithm and the client's delayed ACK turn into about 40 ms per request on a
kept-alive connection. Here the backlog is deep and each answer leaves in one write with
TCP_NODELAY. The gateway itself (routing, the API Gateway event, the stage's environment) is
chalice's own.
"""

from __future__ import annotations

import os
from pathlib import Path

from chalice import local
from chalice.cli.factory import CLIFactory

ROOT = Path(__file__).resolve().parent.parent


class _Handler(local.ChaliceRequestHandler):
    # One buffered write per answer (flushed by http.server after each request), sent at once.
    wbufsize = -1
    disable_nagle_algorithm = True


class _Server(local.ThreadedHTTPServer):
    request_queue_size = 1024


def create(host: str, port: int, stage: str = "dev") -> local.LocalDevServer:
    """A development server for the app at the project root, with the stage's environment applied."""
    factory = CLIFactory(str(ROOT), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    return local.LocalDevServer(config.chalice_app, config, host, port, handler_cls=_Handler, server_cls=_Server)


def main() -> None:
    """`python -m devtools.serve --port N`: the app alone, as the tests start it (no database of its own)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.serve", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args()
    create(args.host, args.port, args.stage).serve_forever()


if __name__ == "__main__":
    main()
