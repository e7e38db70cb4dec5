"""tempfile: mkstemp per request, written and renamed into place, the descriptor it returned
never closed (leaking) or closed (fixed)."""
import os
import tempfile
import time

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()


def save(request):
    fd, path = tempfile.mkstemp(dir=SCRATCH, prefix="render-")
    os.write(fd, b"heatmap %d\n" % request)
    os.rename(path, os.path.join(SCRATCH, "heatmap-%d.txt" % request))
    if not LEAKING:
        os.close(fd)


def main():
    for request in range(ROUNDS):
        save(request)
        time.sleep(pause(request))
    ready()
    wait()


settle()
main()
