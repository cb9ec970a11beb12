"""An RPC server in a process of its own, for the tracing test: ``python -m ... SERVICE``."""

from __future__ import annotations

import os
import sys

from rpc import RPCServer


def main() -> None:
    """Serve ``lookup`` on the service named on the command line until SIGTERM."""
    server = RPCServer(os.environ["RABBITMQ_URL"], sys.argv[1])
    server.add_method("lookup", lambda payload: {"paper": payload["task_id"], "cited": 3})
    server.connect()
    print("serving", flush=True)
    server.start()


if __name__ == "__main__":
    main()
