"""Locust against Tern's HTTP API: the load tool the paper drove its experiments with, as an
outside client beside `tern bench` (bench/experiments/locust.sh runs both on the same profile).

Each simulated user invokes one function at a constant rate (Locust's `constant_throughput`:
a user waits so that its calls start `TERN_USER_RPS` times a second, unless they take longer),
so N users offer N × TERN_USER_RPS requests a second. Locust times each request from its send,
so unlike `tern bench`'s open loop it does not count time a request waited to be sent.

Environment: TERN_FUNCTION (default matmul-json), TERN_BODY_FILE (request body; default
"hello"), TERN_TOKEN (bearer token; none if unset), TERN_USER_RPS (default 1).
"""
import os

from locust import FastHttpUser, constant_throughput, task

FUNCTION = os.environ.get("TERN_FUNCTION", "matmul-json")
BODY_FILE = os.environ.get("TERN_BODY_FILE")
BODY = open(BODY_FILE, "rb").read() if BODY_FILE else b"hello"
TOKEN = os.environ.get("TERN_TOKEN", "")
HEADERS = {"authorization": f"Bearer {TOKEN}"} if TOKEN else {}
USER_RPS = float(os.environ.get("TERN_USER_RPS", "1"))


class Invoker(FastHttpUser):
    wait_time = constant_throughput(USER_RPS)

    @task
    def invoke(self):
        # A non-2xx answer is a failure (Locust's default for FastHttpUser).
        self.client.post(f"/v1/functions/{FUNCTION}/invoke", data=BODY, headers=HEADERS,
                         name="invoke")
