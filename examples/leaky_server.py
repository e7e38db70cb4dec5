"""A small server that leaks, to try helios-trace on (README, "Quick start").

It accepts 60 connections from a client of its own over 15 seconds; each connection is kept in a
module-level list and never closed, so when the client hangs up the server's socket stays open in
CLOSE_WAIT. Then it exits.

    sudo helios-trace run -- python3 examples/leaky_server.py

The report names the line that accepted them (`leaky_server.py:serve:…`) as a suspected leak with
its sockets in CLOSE_WAIT; traced while it runs (`sudo helios-trace -p PID`), the holders line names
`__main__:_connections`.
"""
import socket
import threading
import time

CLIENTS = 60
PAUSE = 0.25

# The leak: connections are added and never removed or closed.
_connections = []


def serve(listener):
    while True:
        connection, _ = listener.accept()
        _connections.append(connection)


def main():
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    port = listener.getsockname()[1]
    for _ in range(CLIENTS):
        client = socket.create_connection(("127.0.0.1", port))
        client.close()
        time.sleep(PAUSE)
    print(f"served {CLIENTS} clients; {len(_connections)} connections still open", flush=True)


main()
