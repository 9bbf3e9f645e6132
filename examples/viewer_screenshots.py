"""Screenshots of ns-viewer on a trained run, for the README: headless Chromium (Debian's ``chromium``)
against a real ``ns-viewer``.

    python examples/viewer_screenshots.py RUN/config.yml docs/ [--port 7021] [--chromium chromium]
        [--wait 100] [--size 1500,950] [--mode "colour by cell"]

Writes ``viewer_partition.png`` (or ``viewer_<mode>.png`` with ``--mode``: the render mode is switched
the way a browser switches it, a viser GUI update sent over the viewer's websocket, protocol of
tests/viser_client.py). Chromium renders WebGL with SwiftShader (no GPU needed); each
screenshot waits ``--wait`` seconds of real time for the viewer's renders to arrive, then is taken
through Chromium's DevTools protocol.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from viser_client import viewer_messages  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


def wait_for_http(port: int, viewer: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if viewer.poll() is not None:
            raise SystemExit(f"ns-viewer exited with {viewer.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"ns-viewer did not answer on port {port} within {timeout:.0f} s")
            time.sleep(2)


def screenshot(chromium: str, url: str, path: Path, size: str, wait: float, port: int = 9333) -> None:
    """Opens ``url`` in headless Chromium, waits ``wait`` real seconds (the viewer renders on the server
    and streams its images over the websocket: Chromium's own --screenshot fires at page load, before
    any of them arrive) and saves the page through the DevTools protocol (Page.captureScreenshot)."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size}",
            f"--remote-debugging-port={port}", "--remote-allow-origins=*", url,
        ]
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as response:
                        pages = [p for p in json.loads(response.read()) if p.get("type") == "page"]
                    if pages:
                        break
                except OSError:
                    pass  # not listening yet: poll again
                if time.monotonic() > deadline:
                    raise SystemExit("chromium's DevTools endpoint did not answer")
                time.sleep(1)
            time.sleep(wait)
            with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as devtools:
                devtools.send(json.dumps({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
                while True:
                    reply = json.loads(devtools.recv(timeout=60))
                    if reply.get("id") == 1:
                        break
            path.write_bytes(base64.b64decode(reply["result"]["data"]))
        finally:
            browser.terminate()
            browser.wait(timeout=30)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--port", type=int, default=7021)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--wait", type=float, default=100.0)
    parser.add_argument("--size", default="1500,950")
    parser.add_argument("--mode", default=None, help='a render mode to switch to first, e.g. "colour by cell"')
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    viewer = subprocess.Popen(
        [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(args.config), "--viewer.websocket-port", str(args.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(args.port, viewer)
        url = f"http://127.0.0.1:{args.port}/"
        name = "viewer_partition.png"
        if args.mode:
            messages = viewer_messages(args.port, seconds=4.0)
            (dropdown,) = [m for m in messages if m.get("type") == "GuiAddDropdownMessage" and m.get("label") == "render mode"]
            update = {"type": "GuiUpdateMessage", "id": dropdown["id"], "updates": {"value": args.mode}}
            viewer_messages(args.port, seconds=3.0, send=[update], send_after=0.5)
            name = f"viewer_{args.mode.replace(' ', '_')}.png"
        screenshot(args.chromium, url, args.output / name, args.size, args.wait)
    finally:
        viewer.terminate()
        try:
            viewer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            viewer.kill()


if __name__ == "__main__":
    main()
