"""Real servers on a free loopback port for the serving tests: uvicorn in a thread, or the
`gpner serve` command in a subprocess.

Waits are generous deadlines polled, never fixed sleeps: on a loaded machine importing torch and
loading a model can take a minute, and a test must not fail for that, only for a wrong answer.
"""

import contextlib
import re
import socket
import subprocess
import threading
import time

STARTUP_SECONDS = 300  # from launch to a healthy /health
REQUEST_SECONDS = 120  # one HTTP request of a test (the default of httpx is 5 s)


def wait_healthy(url: str, deadline: float, alive=lambda: True) -> None:
    """Poll ``url``/health until it answers ``{"status": "ok"}``; RuntimeError past the
    (monotonic) ``deadline`` or once ``alive()`` turns false."""
    import httpx

    while True:
        try:
            answer = httpx.get(f"{url}/health", timeout=REQUEST_SECONDS)
            if answer.status_code == 200 and answer.json().get("status") == "ok":
                return
        except httpx.TransportError:
            pass  # not listening yet
        if not alive():
            raise RuntimeError(f"the server at {url} stopped before it was healthy")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/health not ok within {STARTUP_SECONDS} s")
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port); yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        wait_healthy(url, deadline, thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=REQUEST_SECONDS)
        sock.close()


class ServeProcess:
    """`gpner serve ... --port 0` in a subprocess: its stderr is drained by a thread (so the
    server never blocks on a full pipe and a silent server cannot hang the test), and the URL it
    reports is waited for, then its /health."""

    def __init__(self, cmd: list[str], env: dict) -> None:
        self.process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._url_seen = threading.Event()
        self.url: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match and self.url is None:
                self.url = match.group(1)
                self._url_seen.set()
        self._url_seen.set()  # EOF: the process ended

    def wait_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        self._url_seen.wait(STARTUP_SECONDS)
        if self.url is None:
            raise RuntimeError("gpner serve did not report its address:\n" + self.log)
        wait_healthy(self.url, deadline, lambda: self.process.poll() is None)
        return self.url

    def stop(self) -> None:
        """SIGTERM, then wait for the exit and the end of its stderr."""
        self.process.terminate()
        try:
            self.process.wait(timeout=REQUEST_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=REQUEST_SECONDS)

    @property
    def log(self) -> str:
        return "".join(self.lines)
