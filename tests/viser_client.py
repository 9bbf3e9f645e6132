"""A minimal client of the viewer's websocket (viser's protocol: msgpack messages with a "type" field),
to read the GUI and scene a running ns-viewer sends, as the browser would receive them."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import msgspec
from websockets.sync.client import connect


def viewer_messages(
    port: int, seconds: float = 8.0, send: Sequence[Dict] = (), send_after: float = 3.0,
    until: Optional[Callable[[List[Dict]], bool]] = None,
) -> List[Dict]:
    """Every message the viewer at ``port`` sends within ``seconds`` (or until ``until(messages)`` holds,
    once ``send`` has been sent); ``send`` (message dicts) are sent ``send_after`` seconds after connecting."""
    messages: List[Dict] = []
    with connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=30) as socket:
        started = time.monotonic()
        sent = False
        while time.monotonic() - started < seconds:
            if not sent and time.monotonic() - started > send_after:
                for message in send:
                    socket.send(msgspec.msgpack.encode(message))
                sent = True
            try:
                raw = socket.recv(timeout=0.5)
            except TimeoutError:
                continue
            data = msgspec.msgpack.decode(raw)
            messages.extend(data if isinstance(data, (list, tuple)) else [data])
            if sent and until is not None and until(messages):
                break
    return messages


def markdown_of(messages: List[Dict]) -> Dict[str, str]:
    """The last content of every markdown element, by element id."""
    contents: Dict[str, str] = {}
    for message in messages:
        if message.get("type") == "GuiAddMarkdownMessage":
            contents[message["id"]] = message.get("markdown", "")
        elif message.get("type") == "GuiUpdateMessage" and "markdown" in message.get("updates", {}):
            contents[message["id"]] = message["updates"]["markdown"]
    return contents
