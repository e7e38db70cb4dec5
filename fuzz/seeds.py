#!/usr/bin/env python3
"""Write the seed corpus of each fuzz target (fuzz/corpus/<target>/). Run from anywhere:
the records follow helios-trace-common's #[repr(C)] layouts (little endian)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def header(kind, tgid=100, tid=101, ts=5000):
    return struct.pack("<IIIIQ", kind, tgid, tid, 0, ts)


def syscall(nr, ret, args, path=b"", aux=(), flags=0, stack=7, creator=0, mode=0):
    aux_fds = list(aux) + [0] * (16 - len(aux))
    return (header(1) + struct.pack("<Iiq", nr, stack, ret) + struct.pack("<6Q", *args)
            + struct.pack("<Q", 0) + struct.pack("<16i", *aux_fds)
            + struct.pack("<IIII", len(aux), len(path), flags, mode)
            + path.ljust(256, b"\0") + struct.pack("<Q", creator))


put("record", "openat", syscall(257, 5, [2**64 - 100, 0, 0o2000000, 0, 0, 0], b"/etc/hosts"))
# A directory opened without O_DIRECTORY: its kind from the mode the kernel read (S_IFDIR | 0o755).
put("record", "openat_dir", syscall(257, 6, [2**64 - 100, 0, 0, 0, 0, 0], b"/tmp", mode=0o40755))
put("record", "openat_goroutine", syscall(257, 5, [2**64 - 100, 0, 0o2000000, 0, 0, 0], b"/etc/hosts", creator=0x4a1b2c))
put("record", "pipe2", syscall(293, 0, [0, 0o2000000, 0, 0, 0, 0], aux=(8, 9)))
put("record", "recvmsg", syscall(47, 1, [3, 0, 0x40000000, 0, 0, 0], aux=(11, 12, 13)))
# FD_SYSCALL_USER_STACK: the syscall record, then UserStack (34 register words, stack_len,
# flags), then the stack bytes; sp (x86_64 word 19) points at them.
regs = [0] * 34
regs[16], regs[19] = 0x7f0000001234, 0x7ffd00000000
stack = struct.pack("<4Q", 0x55d0c0a01010, 0, 0x7f0000005678, 0)
with_stack = bytearray(syscall(257, 5, [2**64 - 100, 0, 0, 0, 0, 0], b"/etc/hosts", stack=-2**31))
with_stack[0:4] = struct.pack("<I", 6)
put("record", "openat_user_stack", bytes(with_stack) + struct.pack("<34QII", *regs, len(stack), 1) + stack)
# FD_SYSCALL_CHAIN: the syscall record, then LearnedChain (depth, flags, 64 addresses); with
# flags 1 (SHADOW) it is the chain of the window record that follows.
chain = [0x7f0000001234, 0x55d0c0a01010, 0x7f0000005678] + [0] * 61
for name, flags in [("openat_learned_chain", 0), ("openat_shadow_chain", 1)]:
    learned = bytearray(syscall(257, 5, [2**64 - 100, 0, 0, 0, 0, 0], b"/etc/hosts", stack=-2**31))
    learned[0:4] = struct.pack("<I", 8)
    put("record", name, bytes(learned) + struct.pack("<II64Q", 3, flags, *chain))
put("record", "close", header(2) + struct.pack("<iI", 3, 0))
put("record", "newtask", header(3) + struct.pack("<IIQ", 200, 0, 0x10000) + b"bash".ljust(16, b"\0"))
put("record", "exec", header(4) + struct.pack("<II", 101, 9) + b"bash".ljust(16, b"\0") + b"/bin/bash".ljust(256, b"\0"))
put("record", "exit", header(5))
put("maps", "self", open("/proc/self/maps", "rb").read())
put("proc_text", "status", open("/proc/self/status", "rb").read())
put("proc_text", "fdinfo", "pos:\t0\nflags:\t02100002\nmnt_id:\t25\nino:\t1234\n")
put("proc_text", "format", "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
    "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n")
put("proc_text", "release", "6.18.44-fc-v669")
for i, link in enumerate(["socket:[4242]", "pipe:[99]", "anon_inode:[eventfd]", "anon_inode:inotify",
                          "/memfd:fdwork (deleted)", "pidfd:[77]", "/tmp/evil\nPID 1 fake", "net:[4026531840]"]):
    put("fd_link", f"link{i}", link)
# PYTHON_STACK: the header, frame_count, flags, then 32 (code, instr) pairs.
frames = [(0x7f0000100000, 0x7f0000100040), (0x7f0000200000, 0x7f0000200010)] + [(0, 0)] * 30
put("record", "python_stack", header(7) + struct.pack("<II", 2, 0) + b"".join(struct.pack("<QQ", *f) for f in frames))
# python: selector byte (0: 3.10 line table, 1: 3.11+ location table, 2: _Py_DebugOffsets),
# an i32 instruction offset, then the table; tables of real code objects (tests/data).
import json
with open(os.path.join(HERE, "..", "helios-trace", "tests", "data", "python-linetables.json")) as f:
    for code in json.load(f)[:12]:
        selector = 0 if code["minor"] == 10 else 1
        put("python", f"{code['minor']}-{code['name']}", struct.pack("<Bi", selector, 10) + bytes.fromhex(code["linetable"]))
debug = bytearray(71 * 8)
debug[0:8] = b"xdebugpy"
debug[8:16] = struct.pack("<Q", 0x030D00F0)
put("python", "debug_offsets", bytes([2]) + bytes(debug))

# heap: selector byte (0: 3.11, 1: 3.12, 2: 3.13), then memory at 0x10000 starting with
# _PyRuntime: interpreters.head → an interpreter whose GC generation rings hold one dict and
# one object whose type is that dict (not a type: unknown), the rest of the rings empty.
BASE = 0x10000
# (3.13's interpreter state is 7 KiB: its seed is longer than the fuzzer's -max_len, which cuts it.)
for selector, (head, gens, perm) in enumerate([(40, 672, 752), (40, 136, 216), (632, 7424, 7504)]):
    image = bytearray(0xfff if selector < 2 else 0x4000)
    def word(at, value):
        struct.pack_into("<Q", image, at - BASE, value)
    interp = BASE + (0x100 if selector < 2 else 0x400)
    word(BASE + head, interp)
    rings = [interp + gens + 24 * i for i in range(3)] + [interp + perm]
    for ring in rings:
        word(ring, ring)
    gc1, gc2 = (BASE + 0x600, BASE + 0x700) if selector < 2 else (BASE + 0x3000, BASE + 0x3100)
    word(rings[0], gc1)
    word(gc1, gc2)
    word(gc2, rings[0])
    word(gc2 + 16 + 8, gc1 + 16)
    put("heap", f"3.{11 + selector}-rings", bytes([selector]) + bytes(image))
