"""Run an API-format workflow on a ComfyUI server without its web UI (standard library only).

Upload input images, post the graph, follow the job on the server's websocket, then download every
output image and write the nodes' text outputs. Validation errors (HTTP 400, or node errors on a queued
prompt) and execution errors end in a `ComfyError` carrying the server's own message.

    age-reenact headless api_workflows/reenact_and_age.json --upload 1=me.jpg --upload 2=driver.png \
        --set 5.target_groups='"30-39, 70+"' --out outputs/headless
"""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_SERVER = "http://127.0.0.1:8188"


class ComfyError(RuntimeError):
    """The server refused or failed the workflow; the message is the server's explanation."""


def _node_errors_text(node_errors: dict) -> list[str]:
    lines = []
    for node_id, entry in node_errors.items():
        for error in entry.get("errors", []):
            detail = f": {error['details']}" if error.get("details") else ""
            lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {error.get('message', error.get('type'))}{detail}")
    return lines


def validation_text(body: dict) -> str:
    """The text of a /prompt refusal: the top-level error and each node's errors."""
    error = body.get("error", {})
    if isinstance(error, str):
        error = {"message": error}
    head = error.get("message") or error.get("type") or "the server refused the workflow"
    if error.get("details"):
        head += f": {error['details']}"
    return "\n".join([head, *_node_errors_text(body.get("node_errors", {}))])


def execution_text(data: dict) -> str:
    """The text of an execution_error message (or history status message)."""
    kind = str(data.get("exception_type", "")).rsplit(".", 1)[-1]  # ComfyUI sends the qualified name
    return f"node {data.get('node_id')} ({data.get('node_type')}) raised {kind}: {str(data.get('exception_message', '')).strip()}"


class WebSocket:
    """A minimal RFC 6455 client: text/binary messages in, pings answered, close handled."""

    def __init__(self, url: str, timeout: float | None):
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if parts.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(1024)
            if not chunk:
                raise ComfyError(f"websocket {url}: the server closed the connection during the handshake")
            response += chunk
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise ComfyError(f"websocket {url}: expected '101 Switching Protocols', got '{status}'")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ComfyError("the server closed the websocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)  # clients must mask every frame
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> str | bytes:
        """The next whole message: str for text, bytes for binary (previews)."""
        message, kind = b"", None
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ComfyError("the server closed the websocket")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            kind = kind if opcode == 0x0 else opcode
            message += payload
            if first & 0x80:
                return message.decode() if kind == 0x1 else message

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        self.sock.close()


@dataclass
class RunResult:
    prompt_id: str
    files: list[Path] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)  # node id -> its "text" UI outputs


class ComfyClient:
    def __init__(self, server: str = DEFAULT_SERVER, timeout: float | None = 3600.0):
        self.server = server.rstrip("/")
        if "://" not in self.server:
            self.server = "http://" + self.server
        self.timeout = timeout
        self.client_id = str(uuid.uuid4())

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                text = validation_text(json.loads(body))
            except (json.JSONDecodeError, AttributeError):
                text = body.decode(errors="replace").strip() or exc.reason
            raise ComfyError(f"{path}: HTTP {exc.code}: {text}") from None
        except urllib.error.URLError as exc:
            raise ComfyError(f"cannot reach ComfyUI at {self.server} ({exc.reason}); is the server running?") from None

    def _json(self, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        return json.loads(self._request(path, data, {"Content-Type": "application/json"} if data else None))

    def upload_image(self, path: str | Path) -> str:
        """Upload one image to the server's input folder; returns the name to put in a LoadImage node."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image to upload not found: {path}")
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        reply = json.loads(self._request("/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def queue(self, prompt: dict) -> str:
        reply = self._json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if reply.get("node_errors"):  # queued for the outputs that validated; the rest cannot run
            self._json("/queue", {"delete": [reply["prompt_id"]]})
            raise ComfyError("\n".join(["some outputs failed validation (the job was removed from the queue):", *_node_errors_text(reply["node_errors"])]))
        return reply["prompt_id"]

    def wait(self, ws: WebSocket, prompt_id: str, progress: Callable[[str], None] | None = None) -> None:
        """Follow the websocket until the prompt finishes; raise ComfyError on an error or interruption."""
        while True:
            message = ws.receive()
            if isinstance(message, bytes):
                continue  # preview images
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id", prompt_id) != prompt_id:
                continue
            if kind == "execution_error":
                raise ComfyError(execution_text(data))
            if kind == "execution_interrupted":
                raise ComfyError(f"the job was interrupted at node {data.get('node_id')} ({data.get('node_type')})")
            if kind == "executing" and data.get("node") is None and "prompt_id" in data:
                return  # sent once the history holds the outputs (execution_success comes before that)
            if progress is not None and kind == "progress":
                progress(f"node {data.get('node')}: {data.get('value')}/{data.get('max')}")
            elif progress is not None and kind == "executing":
                progress(f"node {data.get('node')}")

    def run(self, prompt: dict, out_dir: str | Path, progress: Callable[[str], None] | None = None) -> RunResult:
        """Queue a graph, wait for it, download its output images into out_dir; returns files and texts."""
        url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = WebSocket(url, self.timeout)
        except OSError as exc:
            raise ComfyError(f"cannot reach ComfyUI at {self.server} ({exc}); is the server running?") from None
        try:
            prompt_id = self.queue(prompt)
            self.wait(ws, prompt_id, progress)
        except socket.timeout:
            raise ComfyError(f"no word from the server for {self.timeout} s; the job may still be running") from None
        finally:
            ws.close()
        entry = self._json(f"/history/{prompt_id}").get(prompt_id, {})
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            errors = [execution_text(data) for kind, data in status.get("messages", []) if kind == "execution_error"]
            raise ComfyError("\n".join(errors) or "the job ended with an error")
        result = RunResult(prompt_id)
        out_dir = Path(out_dir)
        for node_id, output in entry.get("outputs", {}).items():
            for image in output.get("images", []):
                query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
                path = out_dir / image.get("subfolder", "") / image["filename"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self._request(f"/view?{query}"))
                result.files.append(path)
            if output.get("text"):
                result.texts[node_id] = [str(t) for t in output["text"]]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "outputs.json").write_text(json.dumps({"prompt_id": prompt_id, "outputs": entry.get("outputs", {})}, indent=2))
        return result


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true/false, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(prompt: dict, uploads: dict[str, str], settings: dict[str, Any]) -> dict:
    """Copy of an API graph with inputs replaced; keys are "node" (input 'image') or "node.input"."""
    prompt = json.loads(json.dumps(prompt))
    for key, value in [*((k if "." in k else f"{k}.image", v) for k, v in uploads.items()), *settings.items()]:
        node, _, name = key.partition(".")
        if node not in prompt:
            known = ", ".join(f"{k} ({v.get('class_type')})" for k, v in prompt.items())
            raise ValueError(f"the workflow has no node {node!r}; its nodes: {known}")
        prompt[node].setdefault("inputs", {})[name] = value
    return prompt


def load_workflow(path: str | Path) -> dict:
    prompt = json.loads(Path(path).read_text())
    if "nodes" in prompt and "links" in prompt:
        raise ValueError(f"{path} is a UI-format workflow; use its API-format copy (api_workflows/, or File > Export (API) in ComfyUI).")
    return prompt


def run_file(workflow: str | Path, server: str = DEFAULT_SERVER, uploads: dict[str, str] | None = None, settings: dict[str, Any] | None = None,
             out_dir: str | Path = "outputs/headless", timeout: float | None = 3600.0, progress: Callable[[str], None] | None = None) -> RunResult:
    """Upload the images, run an API workflow file and download its outputs."""
    client = ComfyClient(server, timeout)
    names = {key: client.upload_image(path) for key, path in (uploads or {}).items()}
    return client.run(apply_overrides(load_workflow(workflow), names, settings or {}), out_dir, progress)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {value!r}: expected NODE=VALUE (e.g. 1=photo.jpg or 5.seed=3)")
        pairs[key] = rest
    return pairs


def main(args) -> None:
    """`age-reenact headless`: arguments from cli.py."""
    uploads = _pairs(args.upload, "--upload")
    settings = {key: parse_value(value) for key, value in _pairs(args.set, "--set").items()}
    result = run_file(args.workflow, args.server, uploads, settings, args.out, args.timeout,
                      None if args.quiet else lambda line: print(line, file=sys.stderr))
    for node_id, texts in result.texts.items():
        for text in texts:
            print(f"[node {node_id}] {text}")
    print(f"prompt {result.prompt_id}: {len(result.files)} image(s) in {args.out}")
