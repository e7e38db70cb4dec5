"""requests (urllib3 under it): a Session per request, kept and never closed (leaking: its
pool keeps the keep-alive connection open), or used in `with` (fixed). The server is the
standard library's threaded HTTP/1.1 server in a thread of the same script."""
import http.server
import threading
import time

import requests

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
SESSIONS = []


class Units(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def fetch(url):
    if LEAKING:
        session = requests.Session()
        SESSIONS.append(session)
        return session.get(url).text
    with requests.Session() as session:
        return session.get(url).text


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Units)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    for request in range(ROUNDS):
        fetch("http://127.0.0.1:%d/units" % port)
        time.sleep(pause(request))
    ready(port)
    wait()


settle()
main()
