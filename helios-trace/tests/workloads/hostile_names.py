"""A process whose names are hostile to a report: a command name and an argument with a newline
and invalid UTF-8, a file whose name has both, and a file at a very long path. Waits for a line
on stdin before opening (so the tracer sees the opens), then for another before exiting."""
import ctypes
import os
import sys

FORGED = b"\nPID 1 forged\xff"
PR_SET_NAME = 15

scratch = sys.argv[1].encode()
ctypes.CDLL(None).prctl(PR_SET_NAME, b"ev" + FORGED[:12], 0, 0, 0)
directory = scratch
for _ in range(8):  # 8 x 200 characters: longer than any limit of the report's
    directory = os.path.join(directory, b"d" * 200)
    os.mkdir(directory)
print("ready", flush=True)
sys.stdin.readline()
evil = os.open(os.path.join(scratch, b"evil" + FORGED + b".txt"), os.O_CREAT | os.O_RDWR, 0o600)
long = os.open(os.path.join(directory, b"long.txt"), os.O_CREAT | os.O_RDWR, 0o600)
print(f"opened {evil} {long}", flush=True)
sys.stdin.readline()
