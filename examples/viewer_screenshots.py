"""Screenshots of ns-viewer on a trained run, for the README: headless Chromium (Debian's ``chromium``)
against a real ``ns-viewer``, once in the default render mode and once "colour by cell".

    python examples/viewer_screenshots.py RUN/config.yml docs/ [--port 7021] [--chromium chromium]
        [--wait 40] [--size 1600,1000]

Writes ``viewer_partition.png`` and ``viewer_colour_by_cell.png`` into the output folder. The render
mode is switched the way a browser switches it: a viser GUI update sent over the viewer's websocket
(tests/viser_client.py's protocol). Chromium renders WebGL with SwiftShader (no GPU needed); each
screenshot waits ``--wait`` seconds of real time for the viewer's first renders to arrive.
"""

from __future__ import annotations

import argparse
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


def screenshot(chromium: str, url: str, path: Path, size: str, wait: float) -> None:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size}",
            # Real seconds: the viewer renders on the server and streams the images.
            f"--timeout={int(wait * 1000)}", f"--screenshot={path}", url,
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=wait + 120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--port", type=int, default=7021)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--wait", type=float, default=40.0)
    parser.add_argument("--size", default="1600,1000")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    viewer = subprocess.Popen(
        [str(Path(sys.executable).parent / "ns-viewer"), "--load-config", str(args.config), "--viewer.websocket-port", str(args.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(args.port, viewer)
        url = f"http://127.0.0.1:{args.port}/"
        screenshot(args.chromium, url, args.output / "viewer_partition.png", args.size, args.wait)
        messages = viewer_messages(args.port, seconds=4.0)
        (dropdown,) = [m for m in messages if m.get("type") == "GuiAddDropdownMessage" and m.get("label") == "render mode"]
        viewer_messages(args.port, seconds=3.0, send=[{"type": "GuiUpdateMessage", "id": dropdown["id"], "updates": {"value": "colour by cell"}}], send_after=0.5)
        screenshot(args.chromium, url, args.output / "viewer_colour_by_cell.png", args.size, args.wait)
    finally:
        viewer.terminate()
        try:
            viewer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            viewer.kill()


if __name__ == "__main__":
    main()
