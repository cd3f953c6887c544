"""A cap on the size of request bodies, for the app's HTTP server (an ASGI middleware).

gradio keeps every input value of a call in that session's page state until the session
leaves its table, and decodes base64 images held in the JSON of a call. Files therefore come
through gradio's upload route (bounded by ``max_file_size``); any other request body over
``limit`` bytes is refused with 413 before it is read further.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 2 * 2**20  # a call's JSON: its values and at most a small base64 image


class BodyLimit:
    """Refuse POST bodies over ``limit`` bytes, except on paths ending with ``exempt``."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, exempt: tuple[str, ...] = ("/upload",)):
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").endswith(self.exempt)
        ):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send)
            return
        body, more = [], True  # read it all (at most limit), then hand it on
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        text = json.dumps(
            {
                "error": f"The request is over {self.limit // 2**20} MB: send images as files "
                "(gradio_client's handle_file uploads them), not inside the call."
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(text))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": text})
