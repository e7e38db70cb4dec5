"""Line-table fixtures for helios-trace's unit tests (src/resolve/python/lines.rs).

`python3 linetables.py PYTHON...` runs itself under each interpreter given and writes
../data/python-linetables.json: for a few code objects of each, the raw co_linetable, the first
line, and the line of every instruction offset as the interpreter itself says (co_lines()).
Run alone, it prints one interpreter's entries.
"""
import json
import os
import subprocess
import sys

SAMPLE = '''
def simple(a, b):
    c = a + b
    return c * 2

def branches(x):
    if x > 10:
        for i in range(x):
            x += i
    elif x < 0:
        x = -x
    else:
        x = (
            x +
            1
        )
    return x

def long_jump():
    a = 1
''' + "\n" * 300 + '''
    b = 2
    return a + b

class Handler:
    def on_connect(self, sock):
        try:
            conn, _ = sock.accept()
        except OSError as e:
            raise RuntimeError("x") from e
        return [c for c in range(3) if c]
'''


def entries():
    namespace = {}
    exec(compile(SAMPLE, "sample.py", "exec"), namespace)
    import json.decoder
    import socket
    codes = [
        namespace["simple"].__code__,
        namespace["branches"].__code__,
        namespace["long_jump"].__code__,
        namespace["Handler"].on_connect.__code__,
        json.decoder.JSONDecoder.raw_decode.__code__,
        socket.socket.accept.__code__,
    ]
    out = []
    for code in codes:
        lines = {}
        for start, end, line in code.co_lines():
            for offset in range(start, end, 2):
                lines[offset] = line
        out.append({
            "minor": sys.version_info.minor,
            "version": sys.version.split()[0],
            "name": code.co_name,
            "firstlineno": code.co_firstlineno,
            "linetable": code.co_linetable.hex(),
            "lines": [[offset, lines.get(offset)] for offset in range(0, len(code.co_code), 2)],
        })
    return out


if __name__ == "__main__":
    if len(sys.argv) == 1:
        json.dump(entries(), sys.stdout)
    else:
        merged = []
        for python in sys.argv[1:]:
            merged += json.loads(subprocess.check_output([python, os.path.abspath(__file__)]))
        target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "python-linetables.json")
        with open(target, "w") as f:
            json.dump(merged, f, separators=(",", ":"))
            f.write("\n")
