"""A CPython workload for tests/integration/python_sites.rs, speaking fdwork's protocol: prints
"ready", then answers each command on stdin with "ok" and numbers.

It leaks from one line of a function and one line of a method, each called from a loop: the
first calls run the generic instructions, the later ones (once the code is warm) the
specialized ones of CPython's adaptive interpreter (PEP 659, 3.11+), whose native glue
between the Python frames differs. The leaking lines are marked `# LEAK:<name>`; `lines`
answers their numbers, read from this file, so the test hard-codes none.
"""
import os
import socket
import sys

KEPT = []  # everything leaked stays referenced: nothing is closed by the garbage collector


def open_leak(path):
    f = open(path)  # LEAK:open
    KEPT.append(f)
    return f.fileno()


class Acceptor:
    def __init__(self, listener):
        self.listener = listener

    def on_connect(self):
        conn, _ = self.listener.accept()  # LEAK:accept
        KEPT.append(conn)
        return conn.fileno()


def marked_lines():
    lines = {}
    with open(os.path.abspath(__file__)) as source:
        for number, text in enumerate(source, 1):
            if "# LEAK:" in text and "LEAK:<" not in text:
                lines[text.split("# LEAK:")[1].split()[0]] = number
    return lines


def main():
    scratch = sys.argv[1]
    path = os.path.join(scratch, "data.txt")
    with open(path, "w") as f:
        f.write("x\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    acceptor = Acceptor(listener)
    clients = []
    lines = marked_lines()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        answer = []
        if command == "version":
            answer = [sys.version_info.major, sys.version_info.minor]
        elif command == "lines":
            answer = [lines["open"], lines["accept"]]
        elif command == "open":
            for _ in range(int(args[0])):
                answer.append(open_leak(path))
        elif command == "accept":
            for _ in range(int(args[0])):
                clients.append(socket.create_connection(listener.getsockname()))
                answer.append(acceptor.on_connect())
        elif command == "exit":
            break
        print("ok " + " ".join(str(n) for n in answer), flush=True)


main()
