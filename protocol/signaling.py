"""Offer/answer signaling over HTTP (aiohttp), as in aiortc's server example.

The receiver serves `POST /offer` with a JSON `{"sdp", "type"}` body and answers with the same shape;
the sender posts its offer and applies the answer. One exchange per session.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiortc import RTCSessionDescription

OFFER_PATH = "/offer"
MAX_OFFER_BYTES = 64 * 1024
# The sender retries while the receiver is still starting up.
CONNECT_RETRY_S = 0.2

AnswerFn = Callable[[RTCSessionDescription], Awaitable[RTCSessionDescription]]


class Busy(Exception):
    """Raised by an answer function that is already in a session (HTTP 409)."""


class ReceiverBusy(ConnectionError):
    """The receiver answered HTTP 409: it is in another session (worth retrying later)."""


async def serve(host: str, port: int, answer: AnswerFn) -> tuple[web.AppRunner, int]:
    """Start the signaling server; returns the runner (call `.cleanup()`) and the bound port."""

    async def offer(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
                raise ValueError("expected {'sdp': str, 'type': 'offer'}")
            description = RTCSessionDescription(sdp=body["sdp"], type="offer")
        except ValueError as exc:
            return web.json_response({"error": f"bad offer: {exc}"}, status=400)
        try:
            reply = await answer(description)
        except Busy as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except Exception as exc:  # a broken offer (bad SDP) must not take the server down
            return web.json_response({"error": f"cannot answer: {exc}"}, status=400)
        return web.json_response({"sdp": reply.sdp, "type": reply.type})

    app = web.Application(client_max_size=MAX_OFFER_BYTES)
    app.router.add_post(OFFER_PATH, offer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Bind the socket ourselves so port 0 (any free port) reports the port actually bound.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        await runner.cleanup()
        raise ConnectionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def request_answer(host: str, port: int, offer: RTCSessionDescription, timeout: float = 15.0) -> RTCSessionDescription:
    """POST the offer to the receiver, retrying until it listens or `timeout` passes."""
    url = f"http://{host}:{port}{OFFER_PATH}"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        while True:
            try:
                async with session.post(url, json={"sdp": offer.sdp, "type": offer.type}) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        error = body.get("error") if isinstance(body, dict) else None
                        refusal = ReceiverBusy if response.status == 409 else ConnectionError
                        raise refusal(f"receiver at {host}:{port} refused the offer: {error or response.status}")
                    if not isinstance(body, dict) or body.get("type") != "answer" or not isinstance(body.get("sdp"), str):
                        raise ConnectionError(f"receiver at {host}:{port} sent a malformed answer")
                    return RTCSessionDescription(sdp=body["sdp"], type="answer")
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"no vsae receiver at {host}:{port} ({exc.__class__.__name__})") from None
                await asyncio.sleep(CONNECT_RETRY_S)
