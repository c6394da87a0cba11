"""A small OpenAI-compatible inference server for the demo mode and the test suite.

It behaves enough like llama.cpp's llama-server for a newcomer to watch a swap and for tests
to see exactly what arrived: ``/health`` answers 503 until a load delay has passed, chat and
completions stream SSE with ``usage`` and llama.cpp ``timings``, Anthropic ``/v1/messages``
works with the official SDK, ``/v1/images/generations`` draws a small PNG and
``/v1/audio/speech`` answers a short WAV tone (demo/media.py), ``/ws`` echoes websocket frames, and any other path echoes the
request back (method, path, query, headers, body). Every response names the model id the
server was started for.

Per-request knobs for tests ride in a JSON body field ``"demo"``:
``{"chunks": N, "chunk_delay": s, "sleep": s, "status": code, "die_after_chunks": N,
"stop_listening": true, "hang": true, "grow_gpu": bytes}`` (``stop_listening``: after
answering, close the listening socket and keep running, a server that refuses connections
without exiting; ``hang``: wedge the server from that request on, as ``--hang-after``;
``grow_gpu``: the GPU memory it pretends to use grows by that much).

Memory (``demo/memory.py``): ``--gpu-memory`` (and ``--gpu-memory-asleep``) is what it pretends
to hold on ``--gpu`` for the fake ``nvidia-smi`` (``--cuda``: really allocated), ``--ram`` is
really allocated. Sleep mode as vLLM's: ``POST /sleep?level=1``, ``POST /wake_up`` (takes
``--wake-delay`` seconds, /health answers 503 meanwhile), ``GET /is_sleeping``;
``--fail-sleep`` and ``--fail-wake`` make them answer 500.

Run: ``python -m llamaswap.demo.backend --port 5800 --model-id demo``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from llamaswap.sizes import parse_size

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WORDS = ("This is a demo answer from {model}, a tiny stand-in for a real model, "
         "so you can watch llama-swap start, swap and stream without a GPU.").split()


class Options(argparse.Namespace):
    port: int
    host: str
    model_id: str
    load_delay: float
    never_healthy: bool
    ignore_sigterm: bool
    fail_start: str | None
    crash_after: int
    exit_after: int
    hang_after: int
    log_flood: int
    chunk_delay: float
    chunks: int
    quiet: bool
    gpu: int
    gpu_memory: int
    gpu_memory_asleep: int
    ram: int
    cuda: bool
    fake_gpu_dir: str
    wake_delay: float
    sleep_delay: float
    fail_sleep: bool
    fail_wake: bool


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="llamaswap.demo.backend", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model-id", default="demo")
    p.add_argument("--load-delay", type=float, default=0.0,
                   help="seconds /health answers 503 before turning 200")
    p.add_argument("--never-healthy", action="store_true", help="/health never turns 200")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--fail-start", metavar="MSG", help="print MSG to stderr and exit with code 3")
    p.add_argument("--crash-after", type=int, default=0,
                   help="exit with code 1 after answering N requests (not counting /health)")
    p.add_argument("--exit-after", type=int, default=0,
                   help="exit cleanly (code 0) after answering N requests (not counting /health)")
    p.add_argument("--hang-after", type=int, default=0,
                   help="after answering N requests (not counting /health) stop answering "
                        "anything, /health included, while the process stays alive (a wedged server)")
    p.add_argument("--log-flood", type=int, default=0, metavar="BYTES",
                   help="write this many bytes to stdout at startup")
    p.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between SSE chunks")
    p.add_argument("--chunks", type=int, default=0, help="SSE content chunks (0: one per word)")
    p.add_argument("--quiet", action="store_true", help="do not log each request to stdout")
    p.add_argument("--gpu", type=int, default=0, help="the GPU index its memory is on")
    p.add_argument("--gpu-memory", type=parse_size, default=0, metavar="SIZE",
                   help="GPU memory it pretends to use while awake (e.g. 4GiB)")
    p.add_argument("--gpu-memory-asleep", type=parse_size, default=0, metavar="SIZE",
                   help="GPU memory it pretends to keep while asleep")
    p.add_argument("--ram", type=parse_size, default=0, metavar="SIZE",
                   help="RAM it really allocates (and touches)")
    p.add_argument("--cuda", action="store_true",
                   help="really allocate --gpu-memory with cuMemAlloc (libcuda.so.1)")
    p.add_argument("--fake-gpu-dir", default="", metavar="DIR",
                   help="the fake nvidia-smi state directory (default: $LLAMASWAP_FAKE_GPU_DIR)")
    p.add_argument("--wake-delay", type=float, default=0.0, help="seconds a wake takes")
    p.add_argument("--sleep-delay", type=float, default=0.0, help="seconds a sleep takes")
    p.add_argument("--fail-sleep", action="store_true", help="POST /sleep answers 500")
    p.add_argument("--fail-wake", action="store_true", help="POST /wake_up answers 500")
    return p.parse_args(argv, namespace=Options())


def log(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # the default backlog of 5 resets bursts of concurrent clients (benchmarks, stress tests)
    request_queue_size = 128

    def __init__(self, opts: Options, memory=None):
        self.opts = opts
        self.ready_at = time.monotonic() + opts.load_delay
        self.served = 0
        self.lock = threading.Lock()
        self.hung = threading.Event()
        self.memory = memory
        self.asleep = False
        super().__init__((opts.host, opts.port), DemoHandler)

    def count_request(self) -> int:
        with self.lock:
            self.served += 1
            return self.served


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def timings(prompt_n: int, predicted_n: int, seconds: float) -> dict:
    predicted_ms = max(seconds * 1000, 0.001)
    return {"cache_n": 0, "prompt_n": prompt_n, "prompt_ms": 1.5,
            "prompt_per_second": prompt_n / 0.0015, "predicted_n": predicted_n,
            "predicted_ms": predicted_ms, "predicted_per_second": predicted_n / (predicted_ms / 1000)}


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DemoServer

    def setup(self) -> None:
        super().setup()
        # stream chunks leave at once instead of waiting for Nagle
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if not self.server.opts.quiet:
            log(f"request: {self.command} {self.path} {args[1] if len(args) > 1 else ''}")

    # -- plumbing ---------------------------------------------------------------------
    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, obj: object, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Demo-Model", self.server.opts.model_id)
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Demo-Model", self.server.opts.model_id)
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def after_request(self) -> None:
        opts = self.server.opts
        if not (opts.crash_after or opts.exit_after or opts.hang_after):
            return
        served = self.server.count_request()
        for limit, code, what in ((opts.crash_after, 1, "crashing"), (opts.exit_after, 0, "exiting")):
            if limit and served >= limit:
                log(f"demo backend {opts.model_id}: {what} after {limit} requests")
                self.wfile.flush()
                os._exit(code)
        if opts.hang_after and served >= opts.hang_after and not self.server.hung.is_set():
            log(f"demo backend {opts.model_id}: hanging after {opts.hang_after} requests")
            self.server.hung.set()

    def parse_request(self) -> bool:
        if self.server.hung.is_set():
            threading.Event().wait()  # wedged: the connection is open, nothing ever answers
        return super().parse_request()

    # -- verbs ------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/is_sleeping":
            self.send_json({"is_sleeping": self.server.asleep})
            return
        if path == "/health":
            healthy = not self.server.opts.never_healthy and time.monotonic() >= self.server.ready_at
            if healthy:
                self.send_json({"status": "ok"})
            else:
                self.send_json({"error": {"code": 503, "message": "Loading model",
                                          "type": "unavailable_error"}}, 503)
            return
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket_echo()
            return
        if path in ("/v1/models", "/models"):
            self.send_json({"object": "list", "data": [
                {"id": self.server.opts.model_id, "object": "model", "owned_by": "demo"}]})
        elif path == "/props":
            self.send_json({"model": self.server.opts.model_id, "n_ctx": 4096,
                            "default_generation_settings": {"n_ctx": 4096}})
        else:
            self.echo(b"")
        self.after_request()

    def do_POST(self) -> None:
        body = self.read_body()
        path = urlsplit(self.path).path
        if path in ("/sleep", "/wake_up"):
            self.sleep_or_wake(path == "/sleep")
            return
        if path.startswith("/v1/audio/transcriptions"):
            self.transcribe(body)
            self.after_request()
            return
        try:
            req = json.loads(body) if body else {}
        except (ValueError, RecursionError):  # too deep for json: echoed like any other body
            req = None
        if not isinstance(req, dict):
            self.echo(body)
            self.after_request()
            return
        knobs = req.get("demo") if isinstance(req.get("demo"), dict) else {}
        if knobs.get("grow_gpu") and self.server.memory is not None:
            self.server.memory.grow(int(knobs["grow_gpu"]))
        if knobs.get("hang"):
            log(f"demo backend {self.server.opts.model_id}: hanging")
            self.server.hung.set()
            threading.Event().wait()
        if knobs.get("stop_listening"):
            self.server.socket.shutdown(socket.SHUT_RDWR)  # new connections are refused now
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            self.close_connection = True
        if knobs.get("sleep"):
            time.sleep(float(knobs["sleep"]))
        if knobs.get("status"):
            self.send_json({"error": {"message": "demo error", "type": "demo",
                                      "code": int(knobs["status"])}}, int(knobs["status"]))
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self.chat(req, knobs)
        elif path in ("/v1/completions", "/completions", "/completion"):
            self.complete(req, knobs)
        elif path in ("/v1/embeddings", "/embeddings"):
            self.embed(req)
        elif path in ("/v1/messages", "/messages"):
            self.anthropic(req, knobs)
        elif path == "/v1/images/generations":
            self.images(req)
        elif path == "/v1/audio/speech":
            self.speech(req)
        else:
            self.echo(body)
        self.after_request()

    def do_PUT(self) -> None:
        self.echo(self.read_body())
        self.after_request()

    do_PATCH = do_DELETE = do_PUT

    # -- endpoints --------------------------------------------------------------------
    def sleep_or_wake(self, sleep: bool) -> None:
        """vLLM's sleep mode: /sleep releases the GPU memory, /wake_up takes it back."""
        opts, server = self.server.opts, self.server
        if (opts.fail_sleep if sleep else opts.fail_wake):
            self.send_json({"error": {"message": f"demo: {'sleep' if sleep else 'wake'} failed",
                                      "type": "demo", "code": 500}}, 500)
            return
        memory = server.memory
        if sleep:
            time.sleep(opts.sleep_delay)
            server.asleep = True
            if memory is not None:
                memory.sleep()
        else:
            server.ready_at = time.monotonic() + opts.wake_delay  # /health: 503 meanwhile
            time.sleep(opts.wake_delay)
            server.asleep = False
            if memory is not None:
                memory.wake()
        log(f"demo backend {opts.model_id}: {'asleep' if sleep else 'awake'}")
        self.send_json({})

    def echo(self, body: bytes) -> None:
        parts = urlsplit(self.path)
        try:
            text, encoding = body.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(body).decode(), "base64"
        self.send_json({"model": self.server.opts.model_id, "method": self.command,
                        "path": parts.path, "raw_path": self.path, "query": parts.query,
                        "query_params": parse_qs(parts.query),
                        "headers": [[k, v] for k, v in self.headers.items()],
                        "body": text, "body_encoding": encoding})

    def words(self, knobs: dict) -> list[str]:
        words = [w.format(model=self.server.opts.model_id) for w in WORDS]
        n = int(knobs.get("chunks") or self.server.opts.chunks or 0)
        if n:
            words = [words[i % len(words)] for i in range(n)]
        return words

    def chat(self, req: dict, knobs: dict) -> None:
        model = self.server.opts.model_id
        prompt_n = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", [])
                       if isinstance(m, dict)) or 1
        words = self.words(knobs)
        started = time.monotonic()
        if not req.get("stream"):
            text = " ".join(words)
            self.send_json({
                "id": "chatcmpl-demo", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_n, "completion_tokens": len(words),
                          "total_tokens": prompt_n + len(words)},
                "timings": timings(prompt_n, len(words), time.monotonic() - started)})
            return
        self.stream_words(words, knobs, lambda i, w: {
            "id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": None,
                                         "delta": {"content": (" " if i else "") + w}}]},
            lambda: {"id": "chatcmpl-demo", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}],
                     "usage": {"prompt_tokens": prompt_n, "completion_tokens": len(words),
                               "total_tokens": prompt_n + len(words)},
                     "timings": timings(prompt_n, len(words), time.monotonic() - started)})

    def complete(self, req: dict, knobs: dict) -> None:
        model = self.server.opts.model_id
        prompt_n = len(str(req.get("prompt", "")).split()) or 1
        words = self.words(knobs)
        started = time.monotonic()
        if not req.get("stream"):
            self.send_json({
                "id": "cmpl-demo", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "text": " ".join(words),
                                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_n, "completion_tokens": len(words),
                          "total_tokens": prompt_n + len(words)},
                "timings": timings(prompt_n, len(words), time.monotonic() - started)})
            return
        self.stream_words(words, knobs, lambda i, w: {
            "id": "cmpl-demo", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "text": (" " if i else "") + w,
                                         "finish_reason": None}]},
            lambda: {"id": "cmpl-demo", "object": "text_completion", "created": int(time.time()),
                     "model": model, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": prompt_n, "completion_tokens": len(words),
                               "total_tokens": prompt_n + len(words)},
                     "timings": timings(prompt_n, len(words), time.monotonic() - started)})

    def stream_words(self, words, knobs, make_chunk, make_final) -> None:
        delay = float(knobs.get("chunk_delay", self.server.opts.chunk_delay))
        die_after = int(knobs.get("die_after_chunks") or 0)
        self.start_stream()
        try:
            for i, word in enumerate(words):
                if die_after and i >= die_after:
                    log(f"demo backend {self.server.opts.model_id}: dying mid-stream")
                    os._exit(1)
                if i and delay:
                    time.sleep(delay)
                self.chunk(sse(make_chunk(i, word)))
            self.chunk(sse(make_final()))
            self.chunk(b"data: [DONE]\n\n")
            self.end_stream()
        except (BrokenPipeError, ConnectionResetError):
            log(f"demo backend {self.server.opts.model_id}: client went away, generation stopped")
            self.close_connection = True

    def embed(self, req: dict) -> None:
        inputs = req.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append({"object": "embedding", "index": i,
                         "embedding": [b / 255.0 for b in digest[:8]]})
        n = sum(len(str(t).split()) for t in inputs)
        self.send_json({"object": "list", "data": data, "model": self.server.opts.model_id,
                        "usage": {"prompt_tokens": n, "total_tokens": n}})

    def images(self, req: dict) -> None:
        from llamaswap.demo import media
        n = max(1, min(4, int(req.get("n") or 1)))
        prompt = str(req.get("prompt", ""))
        data = [{"b64_json": base64.b64encode(media.png(f"{prompt}#{i}")).decode(),
                 "revised_prompt": prompt} for i in range(n)]
        self.send_json({"created": int(time.time()), "data": data})

    def speech(self, req: dict) -> None:
        from llamaswap.demo import media
        body = media.wav(str(req.get("input", "")))
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def anthropic(self, req: dict, knobs: dict) -> None:
        model = self.server.opts.model_id
        words = self.words(knobs)
        in_tokens = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", [])
                        if isinstance(m, dict)) or 1
        msg = {"id": "msg_demo", "type": "message", "role": "assistant", "model": model,
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": in_tokens, "output_tokens": 0}}
        if not req.get("stream"):
            msg.update(content=[{"type": "text", "text": " ".join(words)}], stop_reason="end_turn",
                       usage={"input_tokens": in_tokens, "output_tokens": len(words)})
            self.send_json(msg)
            return
        delay = float(knobs.get("chunk_delay", self.server.opts.chunk_delay))

        def event(name: str, data: dict) -> None:
            self.chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        self.start_stream()
        try:
            event("message_start", {"type": "message_start", "message": {**msg, "content": []}})
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})
            for i, word in enumerate(words):
                if i and delay:
                    time.sleep(delay)
                event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta",
                                                        "text": (" " if i else "") + word}})
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            event("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                    "usage": {"output_tokens": len(words)}})
            event("message_stop", {"type": "message_stop"})
            self.end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def transcribe(self, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        fields: dict[str, str] = {}
        file_bytes = 0
        if "boundary=" in ctype:
            boundary = ctype.split("boundary=", 1)[1].strip().strip('"').encode()
            for part in body.split(b"--" + boundary)[1:]:
                if part.startswith(b"--"):
                    break
                head, _, content = part.partition(b"\r\n\r\n")
                content = content[:-2] if content.endswith(b"\r\n") else content
                name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode() if b'name="' in head else ""
                if b"filename=" in head:
                    file_bytes += len(content)
                else:
                    fields[name] = content.decode("utf-8", "replace")
        self.send_json({"text": f"demo transcription by {self.server.opts.model_id}",
                        "model": self.server.opts.model_id, "fields": fields,
                        "file_bytes": file_bytes, "body_bytes": len(body)})

    def websocket_echo(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        rfile = self.rfile
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(rfile.read(8), "big")
            mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(length)))
            if opcode == 0x8:  # close: answer and stop
                self.wfile.write(bytes([0x88, 0]))
                self.wfile.flush()
                return
            if opcode == 0x9:  # ping -> pong
                opcode = 0xA
            if opcode in (0x1, 0x2, 0xA):
                frame = bytearray([0x80 | opcode])
                if len(payload) < 126:
                    frame.append(len(payload))
                elif len(payload) < 65536:
                    frame += bytes([126]) + len(payload).to_bytes(2, "big")
                else:
                    frame += bytes([127]) + len(payload).to_bytes(8, "big")
                self.wfile.write(bytes(frame) + payload)
                self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.fail_start:
        sys.stderr.write(opts.fail_start + "\n")
        sys.stderr.flush()
        return 3
    if opts.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # exit cleanly (and close the listening socket) on SIGTERM, as a server would
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if opts.log_flood:
        block = (b"x" * 99 + b"\n") * 100
        left = opts.log_flood
        while left > 0:
            sys.stdout.buffer.write(block[:left])
            left -= len(block)
        sys.stdout.buffer.flush()
    memory = None
    if opts.gpu_memory or opts.gpu_memory_asleep or opts.ram or opts.cuda:
        # imported only when asked for: a lean backend exits fast on SIGTERM
        from llamaswap.demo.memory import PretendMemory
        try:
            memory = PretendMemory(gpu=opts.gpu, awake=opts.gpu_memory,
                                   asleep=opts.gpu_memory_asleep, ram=opts.ram,
                                   state_dir=opts.fake_gpu_dir, cuda=opts.cuda)
        except (OSError, RuntimeError) as exc:  # no libcuda, a CUDA error
            sys.stderr.write(f"demo backend {opts.model_id}: cannot allocate memory: {exc}\n")
            return 4
    try:
        server = DemoServer(opts, memory)
    except OSError as exc:
        if memory is not None:
            memory.close()
        sys.stderr.write(f"demo backend {opts.model_id}: cannot listen on "
                         f"{opts.host}:{opts.port}: {exc}\n")
        return 2
    log(f"demo backend {opts.model_id} listening on http://{opts.host}:{opts.port} "
        f"(load delay {opts.load_delay:g}s)")
    try:
        server.serve_forever(poll_interval=0.05)
        server.server_close()
        while True:  # only the stop_listening knob ends serve_forever: run on until a signal
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if memory is not None:
            memory.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
