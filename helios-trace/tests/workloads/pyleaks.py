"""A CPython workload for tests/integration/python.rs, speaking fdwork's protocol: prints "ready", then
answers each command on stdin with "ok" and numbers (descriptors, line numbers).

It leaks from functions of known names; the line of each leaking call is marked with a
`# LEAK:<name>` comment, and `lines` answers those line numbers, read from this very file, so
the test hard-codes none. Runs on CPython 3.6+ (the unsupported-interpreter test runs it on
an old one).
"""
import os
import socket
import sys
import threading

SCRATCH = sys.argv[1]
CONNECTIONS = set()  # accepted sockets nobody drops
FAILURES = []  # exceptions kept with their tracebacks (and so their frames' locals)
HANDLES = {}  # files kept by name


class ChatHandler:
    def on_connect(self, listener):
        conn, _ = listener.accept()  # LEAK:accept
        CONNECTIONS.add(conn)
        return conn

    def on_disconnect(self, conn):
        pass  # forgets to close and discard conn


def load_config(path):
    f = open(path)  # LEAK:traceback
    raise ValueError("bad config in %s: %d bytes" % (path, len(f.read())))


def cache_handle(name):
    f = open(os.path.join(SCRATCH, name), "w")  # LEAK:dict
    HANDLES[name] = f
    return f


def read_clean(path):
    with open(path) as f:  # LEAK:clean
        return f.read()


def worker_leak(name, out):
    f = open(os.path.join(SCRATCH, name), "w")  # LEAK:thread
    HANDLES[name] = f
    out.append(f.fileno())


def leak_under_contention(name):
    f = open(os.path.join(SCRATCH, name), "w")  # LEAK:gil
    HANDLES[name] = f
    return f


def leak_behind_a_crowd(name):
    f = open(os.path.join(SCRATCH, name), "w")  # LEAK:crowd
    HANDLES[name] = f
    return f


def spin(stop):
    # Pure Python: holds the GIL but for the interpreter's periodic switches.
    n = 0
    while not stop.is_set():
        n += 1


def marked_lines():
    lines = {}
    with open(os.path.abspath(__file__)) as source:
        for number, text in enumerate(source, 1):
            if "# LEAK:" in text and "LEAK:<" not in text:
                lines[text.split("# LEAK:")[1].split()[0]] = number
    return lines


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    handler = ChatHandler()
    clients = []
    config = os.path.join(SCRATCH, "config.ini")
    with open(config, "w") as f:
        f.write("[x]\n")
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
            answer = [lines[k] for k in ("accept", "traceback", "dict", "clean", "thread", "gil", "crowd")]
        elif command == "accept":
            for _ in range(int(args[0])):
                client = socket.create_connection(listener.getsockname())
                clients.append(client)
                conn = handler.on_connect(listener)
                handler.on_disconnect(conn)
                answer.append(conn.fileno())
        elif command == "traceback":
            try:
                load_config(config)
            except ValueError as e:
                FAILURES.append(e)
                answer.append(e.__traceback__.tb_next.tb_frame.f_locals["f"].fileno())
        elif command == "dict":
            answer.append(cache_handle(args[0]).fileno())
        elif command == "clean":
            for _ in range(int(args[0])):
                read_clean(config)
        elif command == "thread":
            out = []
            t = threading.Thread(target=worker_leak, args=(args[0], out))
            t.start()
            t.join()
            answer = out
        elif command == "gil":
            stop = threading.Event()
            spinner = threading.Thread(target=spin, args=(stop,))
            spinner.start()
            answer.append(leak_under_contention(args[0]).fileno())
            stop.set()
            spinner.join()
        elif command == "crowd":
            # CPython adds each new thread state at the head of its interpreter's list: this
            # thread's is then behind all of the crowd's, as an event loop's behind its workers.
            stop = threading.Event()
            crowd = [threading.Thread(target=stop.wait, daemon=True) for _ in range(int(args[0]))]
            for t in crowd:
                t.start()
            answer.append(leak_behind_a_crowd(args[1]).fileno())
            stop.set()
            for t in crowd:
                t.join()
        elif command == "exit":
            break
        print("ok", *answer, flush=True)


main()
