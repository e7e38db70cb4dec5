# gdb script (generate.sh runs it): stop `sample` at its openat syscall and write what the
# kernel program captures there: the user registers, the stack from sp upward (at most 8 KiB,
# up to the end of the stack mapping), and the process's maps.
import gdb

gdb.execute("break leak_fn")
gdb.execute("run")
gdb.execute("catch syscall openat")
gdb.execute("continue")
frame = gdb.selected_frame()
regs = {name: int(frame.read_register(name)) & 0xFFFFFFFFFFFFFFFF for name in ("rip", "rsp", "rbp")}
with open("regs.txt", "w") as out:
    for name, value in regs.items():
        out.write(f"{name} {value:#x}\n")
pid = gdb.selected_inferior().pid
maps = open(f"/proc/{pid}/maps").read()
stack_end = next(
    int(line.split()[0].split("-")[1], 16) for line in maps.splitlines() if line.endswith("[stack]")
)
end = min(regs["rsp"] + 8192, stack_end)
data = gdb.selected_inferior().read_memory(regs["rsp"], end - regs["rsp"])
with open("stack.bin", "wb") as out:
    out.write(bytes(data))
with open("maps.txt", "w") as out:
    out.write(maps)
gdb.execute("kill")
