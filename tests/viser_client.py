"""A minimal client of the viewer's websocket (viser's protocol: msgpack messages with a "type" field),
to read the GUI and scene a running ns-viewer sends, as the browser would receive them."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import msgspec
from websockets.sync.client import connect


def viewer_messages(
    port: int, seconds: float = 8.0, send: Sequence[Dict] = (), send_after: float = 3.0,
    until: Optional[Callable[[List[Dict]], bool]] = None, resend_every: float = 0.0,
) -> List[Dict]:
    """Every message the viewer at ``port`` sends within ``seconds`` (or until ``until(messages)`` holds,
    once ``send`` has been sent); ``send`` (message dicts) are sent ``send_after`` seconds after connecting,
    and again every ``resend_every`` seconds if > 0 (a browser sends its camera on every move; a single
    message can arrive before the viewer has registered its handlers for the new client)."""
    messages: List[Dict] = []
    with connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=30) as socket:
        started = time.monotonic()
        sent, last_sent = False, 0.0
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            due = not sent and now - started > send_after
            if due or (sent and resend_every > 0 and now - last_sent > resend_every):
                for message in send:
                    socket.send(msgspec.msgpack.encode(message))
                sent, last_sent = True, now
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
