"""An OTLP/HTTP receiver for benchmarks: answers every POST 200 (an empty protobuf message is
a valid ExportTraceServiceResponse) and, when stopped (SIGINT or SIGTERM), writes how many
export requests and bytes it received to the file given.

Usage: python3 otlp-sink.py PORT OUT_FILE
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, out = int(sys.argv[1]), sys.argv[2]
seen = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        seen["requests"] += 1
        seen["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Sink)


def stop(*_):
    with open(out, "w") as f:
        f.write(f"otlp receiver: {seen['requests']} export requests, {seen['bytes']} bytes\n")
    sys.exit(0)


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
server.serve_forever()
