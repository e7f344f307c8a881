#!/usr/bin/env python3
"""The floor under a forwarded invocation on this machine: a UDP round trip between two
processes on loopback, each blocked in recvfrom (so each round trip pays two process
wake-ups, as a forwarded request does). Prints p50 and p90 in microseconds.
Usage: python3 scripts/udp-floor.py [ROUND_TRIPS]   (default 20000)"""
import os
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.bind(("127.0.0.1", 0))
if os.fork() == 0:
    while True:
        data, peer = b.recvfrom(2048)
        if data == b"q":
            os._exit(0)
        b.sendto(data, peer)
samples = []
for _ in range(n):
    t = time.perf_counter_ns()
    a.sendto(b"x" * 100, b.getsockname())
    a.recvfrom(2048)
    samples.append(time.perf_counter_ns() - t)
a.sendto(b"q", b.getsockname())
os.wait()
samples.sort()
print(f"UDP round trip between two processes, {n} x 100 B: "
      f"p50 {samples[n // 2] / 1000:.1f} us, p90 {samples[n * 9 // 10] / 1000:.1f} us")
