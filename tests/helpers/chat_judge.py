"""A scripted judge: a local HTTP server with the OpenAI chat completions route
(`POST /v1/chat/completions`), standing in for the judge model a user runs. Each request takes the
next scripted step: a reply text (answered 200 as a chat completion), an int (answered with that
HTTP status), or ("sleep", seconds, reply) (answers late). Requests are recorded (path, headers,
JSON body) for the test to check."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = str | int | tuple[str, float, str]


@dataclass
class ScriptedJudge:
    url: str  # the base URL, ".../v1"
    steps: list[Step]
    requests: list[dict[str, Any]] = field(default_factory=list)


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


@contextmanager
def scripted_judge(steps: Sequence[Step], error_body: str = "") -> Iterator[ScriptedJudge]:
    """Serve `steps` in order (an error status answers with `error_body`); yields the judge."""
    state = ScriptedJudge(url="", steps=list(steps))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with lock:
                state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                step = state.steps.pop(0) if state.steps else 500
            if self.path != "/v1/chat/completions":
                step = 404
            if isinstance(step, tuple):
                time.sleep(step[1])
                step = step[2]
            if isinstance(step, int):
                status, payload = step, error_body.encode()
            else:
                status, payload = 200, json.dumps(_completion(body.get("model", ""), step)).encode()
            with suppress(BrokenPipeError, ConnectionResetError):  # a client that timed out left
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
