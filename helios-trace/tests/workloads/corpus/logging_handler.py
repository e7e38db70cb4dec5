"""logging: a FileHandler added per request and never removed (leaking) or removed and closed
(fixed)."""
import logging
import os
import time

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
LOG = os.path.join(SCRATCH, "requests.log")
logger = logging.getLogger("units")
logger.setLevel(logging.INFO)


def handle(request):
    handler = logging.FileHandler(LOG)
    logger.addHandler(handler)
    logger.info("request %d", request)
    if not LEAKING:
        logger.removeHandler(handler)
        handler.close()


def main():
    for request in range(ROUNDS):
        handle(request)
        time.sleep(pause(request))
    ready()
    wait()


settle()
main()
