"""subprocess: a child per request with its output piped, waited for but its pipes never read
nor closed (leaking: the Popen objects are kept) or read with communicate() (fixed)."""
import subprocess
import sys
import time

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
CHILDREN = []


def render(request):
    # The interpreter itself as the child: a root of another distribution holds no /bin/echo.
    child = subprocess.Popen([sys.executable, "-S", "-c", "print(%d)" % request], stdout=subprocess.PIPE)
    if LEAKING:
        child.wait()
        CHILDREN.append(child)
    else:
        child.communicate()


def main():
    for request in range(ROUNDS):
        render(request)
        time.sleep(pause(request))
    ready()
    wait()


settle()
main()
