"""Start the real ComfyUI server headless with this pack, drive it over HTTP/WebSocket, stop it.

Shared by the server/contract test tiers and ``make demo``. The server runs from the provisioned
host tree with ``--cpu`` on 127.0.0.1 and a private ``--base-directory`` whose ``custom_nodes``
holds links to this checkout (as ``parallax``) and, optionally, the fixture-only node pack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTING_PACK = ROOT / "devtools" / "custom_nodes" / "parallax_testing"
PACK_NAME = "parallax"
log = logging.getLogger("parallax.devtools")

# Folders the pack and its examples read models from (the real layout under models/).
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "loras", "controlnet", "vae", "clip_vision", "mvadapter", "anydoor",
                 "caa")


class HostError(RuntimeError):
    pass


class PromptFailed(HostError):
    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def comfy_dir() -> Path:
    return Path(os.environ.get("PARALLAX_COMFYUI", ROOT / ".comfyui")).resolve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_failures(log_text: str, packs: list[str]) -> list[str]:
    """Packs the host log reports as failed (import error, or a broken comfy_entrypoint)."""
    failed = []
    for pack in packs:
        pattern = (rf"(Cannot import \S*custom_nodes/{pack} module|Error while calling comfy_entrypoint in \S*custom_nodes/{pack}:"
                   rf"|comfy_entrypoint in \S*custom_nodes/{pack} (is not callable|did not return)|"
                   rf"\(IMPORT FAILED\): \S*custom_nodes/{pack}$)")
        if re.search(pattern, log_text, flags=re.MULTILINE):
            failed.append(pack)
    return failed


@dataclass
class Outputs:
    prompt_id: str
    history: dict
    seconds: float
    images: list[tuple[str, dict]] = field(default_factory=list)  # (node_id, {filename, subfolder, type})


class HostServer:
    def __init__(
        self,
        workdir: Path | None = None,
        with_testing_nodes: bool = True,
        models_dir: Path | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="parallax-host-"))
        self.with_testing_nodes = with_testing_nodes
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "server.log"
        self.client_id = uuid.uuid4().hex
        self._object_info: dict | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> list[str]:
        base = self.workdir / "base"
        nodes_dir = base / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        for name, target in [(PACK_NAME, ROOT)] + ([(TESTING_PACK.name, TESTING_PACK)] if self.with_testing_nodes else []):
            link = nodes_dir / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        for folder in MODEL_FOLDERS:
            (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for sub in ("input", "output", "temp", "user"):
            (base / sub).mkdir(exist_ok=True)
        args = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(base),
            "--database-url", "sqlite:///:memory:",
        ]
        if self.models_dir is not None:
            cfg = self.workdir / "extra_model_paths.yaml"
            lines = ["parallax_models:", f"  base_path: {self.models_dir}", "  is_default: true"]
            lines += [f"  {folder}: {folder}/" for folder in MODEL_FOLDERS]
            cfg.write_text("\n".join(lines) + "\n")
            args += ["--extra-model-paths-config", str(cfg)]
        return args + self.extra_args

    @property
    def base(self) -> Path:
        return self.workdir / "base"

    def start(self, timeout: float = 180.0) -> HostServer:
        host = comfy_dir()
        if not (host / "main.py").is_file():
            raise HostError(f"no ComfyUI host at {host}: run `make setup` (devtools/setup.sh) first")
        args = self._prepare()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        logf = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(args, cwd=host, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                self._object_info = self.get_json("/object_info")
                break
            time.sleep(0.5)
        else:
            self.stop()
            raise HostError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log_tail()}")
        self.check_packs_loaded()
        return self

    def check_packs_loaded(self) -> None:
        """--quick-test-for-ci and start-up both succeed when a pack fails: read the log and the nodes."""
        packs = [PACK_NAME] + ([TESTING_PACK.name] if self.with_testing_nodes else [])
        failed = import_failures(self.log_path.read_text(errors="replace"), packs)
        if failed:
            self.stop()
            raise HostError(f"custom node pack(s) {failed} failed to import:\n{self.log_tail(80)}")
        if not any(name.startswith("Parallax") for name in self.object_info):
            self.stop()
            raise HostError(f"no Parallax node is registered on the host:\n{self.log_tail(80)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> HostServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- HTTP ------------------------------------------------------------------------------
    def request(self, path: str, data: Any = None, method: str | None = None, timeout: float = 30.0) -> bytes:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body else "GET"),
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.request(path))

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def queue(self, prompt: dict, workflow: dict | None = None) -> str:
        prompt_id = str(uuid.uuid4())
        payload = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        if workflow is not None:
            payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        try:
            answer = json.loads(self.request("/prompt", payload))
        except urllib.error.HTTPError as err:
            details = json.loads(err.read() or b"{}")
            raise PromptFailed(f"/prompt rejected the graph: {json.dumps(details)[:2000]}", details) from None
        if answer.get("node_errors"):
            raise PromptFailed(f"/prompt reported node errors: {answer['node_errors']}", answer)
        return answer["prompt_id"]

    def run(self, prompt: dict, workflow: dict | None = None, timeout: float = 600.0) -> Outputs:
        """Queue a prompt and wait on /ws until it finishes; raise PromptFailed on execution_error."""
        import websocket  # websocket-client, a test tool

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        started = time.monotonic()
        try:
            prompt_id = self.queue(prompt, workflow)
            deadline = started + timeout
            while True:
                ws.settimeout(max(1.0, deadline - time.monotonic()))
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise HostError(f"prompt {prompt_id} did not finish within {timeout:.0f}s") from None
                if not isinstance(frame, str):
                    continue  # binary preview frames
                msg = json.loads(frame)
                data = msg.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if msg["type"] == "execution_error":
                    raise PromptFailed(
                        f"{data.get('node_type')} (node {data.get('node_id')}) raised "
                        f"{data.get('exception_type')}: {data.get('exception_message')}", data)
                if msg["type"] == "execution_interrupted":
                    raise PromptFailed("execution interrupted", data)
                if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        seconds = time.monotonic() - started
        history = self.get_json(f"/history/{prompt_id}")[prompt_id]
        status = history.get("status", {})
        if status.get("status_str") == "error":
            raise PromptFailed(f"prompt {prompt_id} failed: {status.get('messages')}", status)
        images = [
            (node_id, image)
            for node_id, out in history.get("outputs", {}).items()
            for image in out.get("images", [])
        ]
        return Outputs(prompt_id, history, seconds, images)

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{query}")

    def upload_input(self, path: Path, name: str | None = None) -> str:
        """Copy a file into the host's input folder (what LoadImage lists)."""
        dest = self.base / "input" / (name or path.name)
        shutil.copyfile(path, dest)
        return dest.name

    def clear_history(self) -> None:
        self.request("/history", {"clear": True})
