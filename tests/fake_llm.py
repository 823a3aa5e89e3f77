"""A scripted fake LLM server on 127.0.0.1 that speaks both OpenAI's chat-completions API and Anthropic's
messages API, so the real `openai` and `anthropic` clients talk to it over HTTP.

Each request takes the next turn of the script; when the script runs out, the last turn repeats. A turn:
    {"text": "..."}                          a normal answer
    {"status": 429, "retry_after": 0}        an HTTP error (a rate limit here), with Retry-After
    {"garbage": true}                        200 with a body that is not JSON
Every request is kept in `requests` (path and JSON body) so a test can read what the model was shown.

Also a script: `python tests/fake_llm.py SCRIPT.json [--port N]` serves until killed and prints
`http://127.0.0.1:PORT` on its first line (the GPU demo uses it: no network there).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    def __init__(self, script: list[dict], port: int = 0):
        self.script = list(script)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeLLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_turn(self, path: str, body: dict) -> dict:
        with self._lock:
            self.requests.append({"path": path, "body": body})
            i = len(self.requests) - 1
            return self.script[min(i, len(self.script) - 1)] if self.script else {"text": ""}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                turn = fake.next_turn(self.path, body)
                if turn.get("garbage"):
                    return self._send(200, b"<html>not json at all", "text/html")
                if "status" in turn:
                    err = {"error": {"type": "rate_limit_error", "message": "slow down (scripted)"}}
                    headers = {"retry-after": str(turn["retry_after"])} if "retry_after" in turn else {}
                    return self._send(turn["status"], json.dumps(err).encode(), headers=headers)
                text = turn.get("text", "")
                tin, tout = 1000 + len(json.dumps(body)) // 4, 50 + len(text) // 4
                if self.path.rstrip("/").endswith("/chat/completions"):
                    payload = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "fake"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
                    }
                elif self.path.rstrip("/").endswith("/messages"):
                    payload = {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model", "fake"),
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": tin, "output_tokens": tout},
                    }
                else:
                    return self._send(404, b'{"error": {"message": "unknown path"}}')
                self._send(200, json.dumps(payload).encode())

            def _send(self, status, data: bytes, ctype="application/json", headers=None):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("script", help="JSON list of turns")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    with open(args.script) as fh:
        fake = FakeLLM(json.load(fh), args.port)
    print(fake.url, flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
