"""
ASGI config for the fabdeploy sample project.

Django's ASGI application, behind a minimal raw-ASGI WebSocket echo at /ws/echo (no Channels): every text
message comes back prefixed with the release that answered it.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sampleproject.settings")

django_application = get_asgi_application()


def _release():
    from django.conf import settings

    return getattr(settings, "FABDEPLOY_RELEASE", None) or os.environ.get("FABDEPLOY_RELEASE") or "dev"


async def echo(scope, receive, send):
    """/ws/echo: accept, then answer each text message with "<release>: <message>" until the client closes."""
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            text = event.get("text")
            if text is None:
                text = (event.get("bytes") or b"").decode("utf-8", "replace")
            await send({"type": "websocket.send", "text": f"{_release()}: {text}"})
        elif event["type"] == "websocket.disconnect":
            return


async def application(scope, receive, send):
    if scope["type"] == "websocket" and scope["path"] == "/ws/echo":
        return await echo(scope, receive, send)
    return await django_application(scope, receive, send)
