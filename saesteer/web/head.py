"""HEAD answered as GET without its body: HTTP requires HEAD wherever GET is served (`curl -I`,
uptime checks, link checkers), and FastAPI's routes answer only the methods they name (405).

The route runs as for a GET; one that would run the model for its page (the fire page's
`?text=`) asks `is_head(request)` first: a HEAD's answer has no body to show the result in, and a
chat app unfurling a pasted link sends one before its GET.
"""

from __future__ import annotations

__all__ = ["head_as_get", "is_head"]

_HEAD = "saesteer.head"  # set in the scope of a HEAD request handed on as a GET


def is_head(request) -> bool:
    """Whether `request` (a Starlette request) came as a HEAD."""
    return bool(request.scope.get(_HEAD))


def head_as_get(app):
    """The ASGI app `app` answering HEAD as GET, sending the headers and no body."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await app(scope, receive, send)
            return

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await app({**scope, "method": "GET", _HEAD: True}, receive, headers_only)

    return asgi
