"""The receiver: answer one sender at a time, take its model, rebuild hi-res video from its low-res track.

A session goes hello -> config -> (model chunks -> model done) -> ack -> video -> bye; when the sender starts
the video before the model (Config.early), hello -> config -> pending ack -> video, with the model chunks
during it (the bicubic rebuild shows until the model is verified, then ack) -> bye. In a live call
(`config.guard`) the video comes with the guard's modes for every frame and, with a refresh, model updates:
each is verified whole against the weights it names (codec.refresh.read_update, off the event loop) and
scheduled from its key, or refused with the old model kept; either way the sender hears (update_ack). Anything out of
place, malformed or failing verification gets an `error` message and a clean close of that session;
the receiver itself keeps listening for the next one until a session completes.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from codec import bundle
from codec.errors import BundleError, VsaeError
from codec.guard import FrameModes, tile_grid
from codec.refresh import MAX_UPDATE_BYTES, UpdateError, read_update
from codec.memory import peak_rss_mb
from codec.ops import DEFAULT_ITERATIONS, DEFAULT_TEMPORAL_METHOD, Codec
from codec.video import resize, to_tensor, to_uint8
from protocol import auth
from protocol import feedback as transport_feedback
from protocol import messages as msg
from protocol.peer import DEFAULT_HOST, new_peer_connection, send_message
from protocol.signaling import Busy, serve
from protocol.timing import IndexMapper

from . import jitter
from .feedback import ArrivalFeedback
from .probes import CLUSTER_WAIT_S, ProbeTimer
from .sampler import Sampler, worker_counters
from .transport import DatagramCounter
from .worker import MAX_PENDING_SHAPES, MAX_SHAPE_RUNS, ReconstructWorker, StreamInfo

log = logging.getLogger("vsae.receiver")

# A session that has not finished the handshake and model transfer by then is dropped.
HANDSHAKE_TIMEOUT_S = 120.0
# After our bye, wait this long for the sender to close the connection before closing it ourselves.
BYE_LINGER_S = 5.0
# A new sender may take over from a session still in its handshake or model transfer that has not heard from
# its peer for this long (a sender that gave up on a dead connection and retries; the old session would
# otherwise hold the receiver until ICE consent expires, ~30 s).
STALLED_HANDSHAKE_S = 10.0
# Session states before video may flow; "loading": the model is being verified, loaded, the worker started
# (each control message is its own task, so anything arriving meanwhile must find a state that refuses it).
HANDSHAKE_STATES = ("hello", "config", "model", "loading")


@dataclass
class ReceiveOptions:
    host: str = DEFAULT_HOST
    port: int = 8765
    output: str = "vsae_out.mp4"
    stats: str | None = None
    reference: np.ndarray | None = None  # uint8 (N, H, W, 3), aligned with the sender's frames
    bicubic_output: str | None = None
    iterations: int = DEFAULT_ITERATIONS
    method: str = DEFAULT_TEMPORAL_METHOD
    adapt: bool = True  # step the rebuild down/up with the measured load (receiver/ladder.py)
    device: str = "cpu"
    models: dict[str, Codec] = field(default_factory=dict)  # sha256 -> loaded model the receiver holds
    secret: bytes | None = None  # shared secret: stream only from senders whose config tag proves it
    reference_loop: bool = False  # score output frame i against reference[i % len(reference)] (a looped sender)
    samples: str | None = None  # JSON-lines file: RSS, output fps and counters every sample_interval s (receiver.sampler)
    sample_interval: float | None = None  # default receiver.sampler.SAMPLE_INTERVAL_S
    # Called with every output frame (index, shown, bicubic; uint8 H x W x 3) from the reconstruction thread:
    # the live view (receiver/view.py). Must not block.
    on_output: Callable[[int, np.ndarray, np.ndarray | None], None] | None = None


class Session:
    """One sender's session on the receiver."""

    def __init__(self, receiver: "Receiver"):
        self.receiver = receiver
        self.options = receiver.options
        self.pc = new_peer_connection(self.options.host)
        self.control: RTCDataChannel | None = None
        self.state = "hello"
        self.hello: msg.Hello | None = None
        self.nonce = auth.new_nonce() if self.options.secret is not None else ""
        self.authenticated = False
        self.config: msg.Config | None = None
        self.model_data = bytearray()  # the model's bytes received so far (whole chunks)
        self.next_chunk = 0  # the next ModelChunk.seq expected
        self.resumed_bytes = 0  # model bytes taken over from an interrupted session
        self._partial: PartialModel | None = None  # offered in our hello, adopted once the config checks out
        self.resumable = False  # the connection dropped mid-transfer: keep the chunks for the sender's retry
        self.last_heard = time.monotonic()
        self.peer_closed = asyncio.Event()
        self.said_bye = asyncio.Event()  # our bye is out and the connection closed (a complete session's end)
        self.codec: Codec | None = None
        self.model_bytes = 0
        self.model_transferred = False
        self.datachannel_bytes = 0
        self.worker: ReconstructWorker | None = None
        self.mapper: IndexMapper | None = None
        self.last_index = -1
        self.jitter_buffers: list[jitter.DrainingJitterBuffer] = []
        self.sender_bye: msg.Bye | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()  # stats dict or error text
        self.began = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        # A live call's model updates: parts of the one being received, the newest verified model (updates
        # chain: each is checked against the weights of the one before, applied or still scheduled).
        self.update_parts: list[bytes] = []
        self._update_header: tuple[int, int] | None = None  # (version, parts) of the update being received
        self.update_version = 0
        self.latest_model = None
        self.updates_applied = 0
        self.updates_refused = 0
        self.update_refusals: list[str] = []
        self.update_bytes = 0
        self.modes_bytes = 0
        self.last_shape_first = 0  # an adaptive stream: the first frame of the latest shape announced
        self.shape_codecs: list[list] = []  # [first frame, codec] of each shape message that named its codec
        self.probes = ProbeTimer()  # the sender's bandwidth probes (Config.probes), timed as they arrive
        self.arrivals: ArrivalFeedback | None = None  # the video's packets as they arrive (Config.feedback)
        self._probe_check_pending = False
        # An early start (Config.early): the model arrives during the stream.
        self.awaiting_model = False
        self.began_wall = time.time()  # time to first frame / to the model count from the offer's answer
        self.model_ready_wall: float | None = None

        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # -- plumbing ------------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.peer_closed.set()
        if self.pc.connectionState in ("failed", "closed") and not self.done.done():
            self.resumable = self.state == "model" or self.awaiting_model
            self._spawn(self.close(f"connection {self.pc.connectionState} before the stream ended"))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == "control":
            self.control = channel
            channel.on("message", lambda data: self._spawn(self._on_control(data)))
        elif channel.label == "meta":
            channel.on("message", self._on_meta)
        else:
            self._spawn(self.refuse("unexpected", f"unknown data channel {channel.label[:40]!r}"))

    def _on_meta(self, data) -> None:
        self.datachannel_bytes += len(data)
        try:
            message = msg.decode(data)
        except msg.ProtocolError as exc:
            self._spawn(self.refuse(exc.code, f"meta channel: {exc}"))
            return
        if isinstance(message, msg.Probe) and self.config is not None and self.config.probes:
            # Timed while the video runs; a straggler after the bye (the meta channel is unordered, the bye is not)
            # has nothing left to tell.
            if self.state == "streaming":
                self._answer_probes(self.probes.on_probe(message, time.monotonic()))
        elif not isinstance(message, msg.Frame):
            self._spawn(self.refuse("unexpected", f"meta channel carries frame messages (and probes when the config "
                                                  f"says so), got {message.kind}"))
        elif self.worker is None:  # the sender sends frame metadata only after our ack
            self._spawn(self.refuse("unexpected", "frame metadata arrived before the model was acknowledged"))
        else:
            self.worker.note_capture(message.index, message.capture_time)

    def _answer_probes(self, results: list[msg.ProbeResult]) -> None:
        """Answer the probe clusters that are due, and look again once the oldest still open has waited long enough."""
        for result in results:
            self._spawn(self.send(result))
        if self.probes.open and not self._probe_check_pending:
            self._probe_check_pending = True

            def check() -> None:
                self._probe_check_pending = False
                if not self.done.done():
                    self._answer_probes(self.probes.expire(time.monotonic()))

            asyncio.get_running_loop().call_later(CLUSTER_WAIT_S, check)

    def _start_feedback(self) -> None:
        """Tell the sender how the video's packets arrive (receiver/feedback.py), in RTCP (protocol/feedback.py)."""
        self.arrivals = arrivals = ArrivalFeedback()
        for buffer in self.jitter_buffers:

            def on_arrival(packet, now: float, buffer=buffer) -> None:
                arrivals.on_packet(now, len(packet.payload), packet.extensions.abs_send_time)
                feedback = arrivals.due(now)
                if feedback is not None:
                    buffer.send_feedback(packet.ssrc, transport_feedback.pack(feedback))

            buffer.on_arrival = on_arrival

    async def send(self, message: msg.Message) -> None:
        if self.control is not None and self.control.readyState == "open":
            self.datachannel_bytes += await send_message(self.control, message)

    async def refuse(self, code: str, text: str) -> None:
        """Tell the peer what was wrong, then end the session."""
        if self.done.done():
            return
        log.warning("refusing sender: %s: %s", code, text)
        self._fail(f"{code}: {text}")  # first: the peer's reaction (closing) must not mask the reason
        try:
            await self.send(msg.Error(code=code, message=text[: msg.MAX_TEXT]))
            await asyncio.sleep(0.2)  # let the error reach the peer before the close
        except (ConnectionError, msg.ProtocolError):
            pass
        await self.close()

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(SessionFailed(reason))

    async def close(self, error: str | None = None) -> None:
        """End the session: a complete one has its stats set already; anything else failed."""
        if error is not None:
            self._fail(error)
        if self.worker is not None and self.state != "finished":
            self.state = "finished"
            await asyncio.get_running_loop().run_in_executor(None, self.worker.finish, None)
        await self.pc.close()

    # -- control messages ----------------------------------------------------------------------------
    async def _on_control(self, data) -> None:
        if self.done.done():
            return
        self.datachannel_bytes += len(data)
        self.last_heard = time.monotonic()
        try:
            message = msg.decode(data)
        except msg.ProtocolError as exc:
            await self.refuse(exc.code, str(exc))
            return
        handler = {
            ("hello", "hello"): self._hello,
            ("config", "config"): self._config,
            ("model", "model_chunk"): self._chunk,
            ("model", "model_done"): self._model_done,
            ("streaming", "bye"): self._bye,
            ("streaming", "modes"): self._modes,
            ("streaming", "shape"): self._shape,
            ("streaming", "update"): self._update,
            ("streaming", "model_chunk"): self._chunk,
            ("streaming", "model_done"): self._model_done,
        }.get((self.state, message.kind))
        if isinstance(message, msg.Error):
            await self.close(f"sender reported {message.code}: {message.message}")
        elif handler is None:
            await self.refuse("unexpected", f"{message.kind} message while expecting {self._expecting()}")
        else:
            await handler(message)

    def _expecting(self) -> str:
        return {"hello": "hello", "config": "config", "model": "model chunks", "loading": "nothing until our ack",
                "streaming": "video or bye"}.get(self.state, self.state)

    async def _hello(self, hello: msg.Hello) -> None:
        if hello.role != "sender" or not hello.model_sha256:
            await self.refuse("bad_value", "expected a sender hello naming its model's SHA-256")
            return
        self.hello = hello
        have = hello.model_sha256 in self.options.models
        partial = self.receiver.partial
        if not have and partial is not None and (partial.sha256, partial.size) == (hello.model_sha256, hello.model_bytes):
            self._partial = partial
        self.state = "config"
        offset = len(self._partial.data) if self._partial else 0
        await self.send(msg.Hello(role="receiver", have_model=have, nonce=self.nonce, model_offset=offset,
                                  rebuild_method=self.options.method, rebuild_iterations=self.options.iterations))

    async def _config(self, config: msg.Config) -> None:
        # The tag is checked before any model chunk is taken and before a cached model is used.
        if not await self._authenticate(config):
            return
        self.config = config
        if config.feedback:
            self._start_feedback()
        if self.options.reference is not None and len(self.options.reference) < config.frames and not self.options.reference_loop:
            log.warning("reference has %d frames, the stream %d: metrics cover the overlap", len(self.options.reference), config.frames)
        codec = self.options.models.get(self.hello.model_sha256)
        if codec is not None:
            if await self._fits(codec):
                await self._start(codec)
        else:
            if self._partial is not None:  # only now: the config's tag (if any) has been checked
                self.receiver.partial = None
                # The sender resumes at chunk offset // its chunk size: keep as many whole chunks of that size.
                size = config.model_chunk_bytes
                self.next_chunk = len(self._partial.data) // size
                self.model_data = bytearray(self._partial.data[: self.next_chunk * size])
                self.resumed_bytes = len(self.model_data)
                log.info("resuming the model transfer at %d of %d bytes", self.resumed_bytes, self.hello.model_bytes)
            self.state = "model"
            if config.early:
                if config.guard:
                    await self.refuse("bad_value", "a live call (guard) cannot start before the model has arrived")
                    return
                self.awaiting_model = True
                await self._start(None)

    async def _authenticate(self, config: msg.Config) -> bool:
        secret = self.options.secret
        if secret is None:
            if config.auth:
                log.warning("the sender sent an auth tag, but this receiver has no shared secret: not checked")
            return True
        if not config.auth:
            await self.refuse("auth_required", "this receiver requires a shared secret and the sender's config "
                                               "carries no tag (vsae send --secret-file)")
            return False
        if not auth.verify(secret, self.nonce, self.hello, config):
            await self.refuse("auth_failed", "the config's tag does not match this receiver's shared secret "
                                             "(a different secret, or the hello or config was altered)")
            return False
        self.authenticated = True
        return True

    async def _fits(self, codec: Codec) -> bool:
        """The model was fitted at the stream's frame size (when its bundle records one); else refuse."""
        size = codec.meta.get("frame_size")
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
            return True  # not recorded: nothing to check
        if size != [self.config.width, self.config.height]:
            await self.refuse("model_mismatch", f"the model was fitted at {size[0]}x{size[1]}, "
                                                f"the stream is {self.config.width}x{self.config.height}")
            return False
        return True

    async def _chunk(self, chunk: msg.ModelChunk) -> None:
        if self.state == "streaming" and not self.awaiting_model:
            await self.refuse("unexpected", "model chunk after the model was complete")
            return
        if chunk.seq != self.next_chunk:
            await self.refuse("bad_chunk", f"model chunk {chunk.seq} out of order (expected {self.next_chunk})")
            return
        if len(self.model_data) + len(chunk.data) > self.hello.model_bytes:
            await self.refuse("model_rejected", f"model larger than the announced {self.hello.model_bytes} bytes")
            return
        size = self.config.model_chunk_bytes
        if len(chunk.data) != size and len(self.model_data) + len(chunk.data) != self.hello.model_bytes:
            # Only the last chunk may be short: a resumed transfer counts whole chunks.
            await self.refuse("bad_chunk", f"model chunk {chunk.seq} has {len(chunk.data)} bytes, the config says {size}")
            return
        self.model_data += chunk.data
        self.next_chunk += 1

    async def _model_done(self, done: msg.ModelDone) -> None:
        early = self.state == "streaming"
        if early and not self.awaiting_model:
            await self.refuse("unexpected", "model_done after the model was complete")
            return
        if not early:
            self.state = "loading"
        self.awaiting_model = False
        data = bytes(self.model_data)
        self.model_data = bytearray()
        if done.size != len(data) or done.size != self.hello.model_bytes:
            await self.refuse("model_rejected", f"model size {len(data)} B does not match the announced {done.size} B")
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest != done.sha256 or digest != self.hello.model_sha256:
            await self.refuse("model_rejected", "model SHA-256 does not match the announced one (corrupted in transfer?)")
            return
        try:
            codec = await asyncio.get_running_loop().run_in_executor(None, bundle.loads, data, self.options.device)
        except BundleError as exc:
            await self.refuse("model_rejected", f"model does not load: {exc}")
            return
        except Exception as exc:  # e.g. MemoryError / torch's RuntimeError building a huge model the config asks for
            await self.refuse("model_rejected", f"model does not load: {type(exc).__name__}: {str(exc)[:120]}")
            return
        if not await self._fits(codec):
            return
        self.model_bytes, self.model_transferred = len(data), True
        self.options.models[digest] = codec
        if early:  # the stream is on: the worker switches to the model at its next key
            if self.state != "streaming" or self.worker is None:
                return  # the session ended while the model loaded
            self.codec = codec
            self.worker.set_model(codec)
            self.model_ready_wall = time.time()
            log.info("model verified %.2f s into the session: rebuilding with it from the next key",
                     self.model_ready_wall - self.began_wall)
            await self.send(msg.Ack(sha256=self.hello.model_sha256))
            return
        await self._start(codec)

    async def _start(self, codec: Codec | None) -> None:
        """Start the rebuild and tell the sender to stream: with the model, or (an early start, codec None)
        without it for now."""
        self.state = "loading"
        config = self.config
        self.codec = codec
        if codec is not None:
            self.model_bytes = self.model_bytes or self.hello.model_bytes
            self.model_ready_wall = self.model_ready_wall or time.time()
        info = StreamInfo((config.height, config.width), config.fps, config.temporal, config.frames, adaptive=config.shapes,
                          low_size=(config.low_height, config.low_width))
        reference = self.options.reference
        if reference is not None and reference.shape[1:3] != info.size:
            log.warning("reference is %dx%d, the stream %dx%d: comparing at the stream's size",
                        reference.shape[2], reference.shape[1], config.width, config.height)
            reference = to_uint8(resize(to_tensor(reference), info.size))
        loop = asyncio.get_running_loop()
        try:
            self.worker = await loop.run_in_executor(
                None, lambda: ReconstructWorker(self._session_codec(codec) if codec is not None else None, info, self.options.output, self.options.iterations,
                                                self.options.method, reference, self.options.bicubic_output,
                                                self.options.reference_loop, self.options.adapt, config.guard,
                                                self.options.on_output),
            )
        except Exception as exc:  # e.g. the output file cannot be written
            await self.refuse("receiver_failed", f"cannot start reconstruction: {exc}")
            return
        self.mapper = IndexMapper(config.ticks)
        self.state = "streaming"
        if self.options.samples:  # sampling runs while this session streams; any end of the session stops it
            sampler = Sampler(self.options.samples, worker_counters(self.worker), self.options.sample_interval).start()
            self.done.add_done_callback(lambda _: sampler.stop())
        await self.send(msg.Ack(sha256=self.hello.model_sha256, pending=codec is None))

    def _session_codec(self, codec: Codec) -> Codec:
        """The model this session rebuilds with: a live call's updates change weights, so it gets its own copy
        (the model the receiver holds for later sessions stays as shipped)."""
        if not self.config.guard:
            return codec
        own = Codec(copy.deepcopy(codec.model), codec.normalization, meta=codec.meta)
        self.latest_model = copy.deepcopy(codec.model)
        return own

    async def _modes(self, modes: msg.Modes) -> None:
        if not self.config.guard:
            await self.refuse("unexpected", "guard modes in a stream whose config did not announce a guard")
            return
        tiles = math.prod(tile_grid((self.config.height, self.config.width)))
        parsed, data = [], modes.data
        try:
            while data:
                frame_modes, used = FrameModes.from_bytes(data, tiles)
                parsed.append(frame_modes)
                data = data[used:]
        except VsaeError as exc:
            await self.refuse("bad_value", f"modes for frame {modes.first}: {exc}")
            return
        self.modes_bytes += len(msg.encode(modes))  # the message's bytes: the guard's share of the bitrate
        self.worker.note_modes(modes.first, parsed)

    async def _shape(self, shape: msg.Shape) -> None:
        """An adaptive stream's next shape (Config.shapes), checked before the worker takes it up."""
        config = self.config
        if config.guard or not config.shapes:
            await self.refuse("unexpected", "a shape change in a stream whose config did not announce them")
            return
        if shape.first >= config.frames or shape.first < self.last_shape_first:
            await self.refuse("bad_value", f"shape change at frame {shape.first}: outside the stream or before the "
                                           f"previous change (frame {self.last_shape_first})")
            return
        full = (shape.low_width, shape.low_height) == (config.width, config.height)
        if shape.plain != full or shape.low_width > config.width or shape.low_height > config.height:
            await self.refuse("bad_value", f"shape {shape.low_width}x{shape.low_height} (plain: {shape.plain}) does not fit "
                                           f"a {config.width}x{config.height} stream (plain is exactly full size)")
            return
        if self.worker.pending_shapes >= MAX_PENDING_SHAPES:
            await self.refuse("too_large", f"more than {MAX_PENDING_SHAPES} shape changes ahead of the video")
            return
        self.last_shape_first = shape.first
        if shape.codec and len(self.shape_codecs) < MAX_SHAPE_RUNS:
            self.shape_codecs.append([shape.first, shape.codec])
        self.worker.schedule_shape(shape.first, shape.temporal, shape.plain, (shape.low_height, shape.low_width))

    async def _update(self, part: msg.Update) -> None:
        if not self.config.guard:
            await self.refuse("unexpected", "a model update in a stream whose config did not announce a live call")
            return
        if part.part == 0:
            self.update_parts, self._update_header = [], (part.version, part.parts)
        elif (part.version, part.parts) != self._update_header or part.part != len(self.update_parts):
            await self.refuse("bad_value", f"model update part {part.part}/{part.parts} of version {part.version} out of order")
            return
        self.update_parts.append(part.data)
        self.update_bytes += len(msg.encode(part))  # the message's bytes: the model stream's share
        if len(self.update_parts) < part.parts:
            return
        data, self.update_parts = b"".join(self.update_parts), []
        if len(data) > MAX_UPDATE_BYTES:
            await self._refuse_update(part.version, f"model update over {MAX_UPDATE_BYTES} bytes")
            return
        try:
            # Checked against the newest verified weights (applied or scheduled) and their version.
            updated, info = await asyncio.get_running_loop().run_in_executor(
                None, read_update, data, self.latest_model, self.update_version)
        except UpdateError as exc:
            await self._refuse_update(part.version, str(exc))
            return
        self.latest_model, self.update_version = updated, info.version
        self.worker.schedule_update(info.apply_from, updated.state_dict(), info.version)
        self.updates_applied += 1
        await self.send(msg.UpdateAck(version=info.version, applied=True))

    async def _refuse_update(self, version: int, reason: str) -> None:
        """A bad update is refused, never the session: the old model stays and the sender hears why."""
        self.updates_refused += 1
        if len(self.update_refusals) < 100:
            self.update_refusals.append(reason[:120])
        log.warning("refused model update %d: %s (the old model stays)", version, reason)
        await self.send(msg.UpdateAck(version=version, applied=False, reason=reason[: msg.MAX_TEXT]))

    async def _bye(self, bye: msg.Bye) -> None:
        self.sender_bye = bye
        self.state = "finished"
        if 0 < bye.frames < self.config.frames:
            # A live source: the config named a cap, the bye the source frames the stream did cover.
            self.config = dataclasses.replace(self.config, frames=bye.frames)
        await asyncio.get_running_loop().run_in_executor(None, self.worker.finish, self.config.frames)
        if self.worker.error is not None:
            await self.refuse("receiver_failed", f"reconstruction failed: {self.worker.error}")
            return
        if not self.done.done():  # complete before the sender's close arrives
            self.done.set_result(self._stats())
        try:
            await self.send(msg.Bye(frames=self.worker.frames_out))
            # The sender closes once it has our bye. Closing first could overtake the bye on a link that
            # reorders (the DTLS close alert and the SCTP data travel separately): the sender would see a
            # dropped connection instead of a finished session.
            await asyncio.wait_for(self.peer_closed.wait(), BYE_LINGER_S)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the stream is complete; at worst the sender misses our count
        await self.pc.close()
        self.said_bye.set()

    # -- video ---------------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._receive_video(track))

    async def _receive_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.state != "streaming":
                if self.state in HANDSHAKE_STATES:
                    await self.refuse("unexpected", "video arrived before the model was acknowledged")
                return
            index = self.mapper.index(frame.pts)
            if index is None or index <= self.last_index or index >= self.config.frames:
                continue  # a sync frame, a duplicate, or beyond the announced stream
            self.last_index = index
            rgb = frame.to_ndarray(format="rgb24")
            self.worker.submit(index, rgb)

    # -- stats ---------------------------------------------------------------------------------------
    def _stats(self) -> dict:
        config, bye = self.config, self.sender_bye
        worker = self.worker.stats() if self.worker else {}
        duration = config.frames / config.fps if config else None
        stats = {
            "frames_in": config.frames if config else 0,
            "frames_out": worker.get("frames_out", 0),
            "frames_concealed": worker.get("frames_concealed", 0),
            "video_kbps": round(bye.video_bytes * 8 / duration / 1000, 3) if bye and duration else None,
            "model_bytes": self.model_bytes,
            "datachannel_bytes": self.datachannel_bytes,
            "fps_reconstruct": worker.get("fps_reconstruct"),
            "latency_ms": worker.get("latency_ms"),
            "psnr": worker.get("psnr"),
            "psnr_bicubic": worker.get("psnr_bicubic"),
            "ssim": worker.get("ssim"),
        }
        stats.update({k: v for k, v in worker.items() if k not in stats})
        if config is not None and config.guard and duration:
            stats.update({
                "guard": True,
                "guard_kbps": round(self.modes_bytes * 8 / duration / 1000, 3),
                "model_kbps": round(self.update_bytes * 8 / duration / 1000, 3),
                "total_kbps": round((bye.video_bytes if bye else 0) * 8 / duration / 1000
                                    + (self.modes_bytes + self.update_bytes) * 8 / duration / 1000, 3),
                "updates_applied": self.updates_applied,
                "updates_refused": self.updates_refused,
                "update_refusals": self.update_refusals,
            })
        stats.update({
            "video_bytes": bye.video_bytes if bye else None,
            "video_packets": bye.video_packets if bye else None,
            "target_kbps": config.kbps if config else None,
            "codec": config.codec if config else None,
            **({"shape_codecs": self.shape_codecs} if self.shape_codecs else {}),
            "scale": config.scale if config else None,
            "temporal": config.temporal if config else None,
            "fps": config.fps if config else None,
            "size": [config.width, config.height] if config else None,
            "low_size": [config.low_width, config.low_height] if config else None,
            "iterations": self.options.iterations,
            "method": self.options.method,
            "model_transferred": self.model_transferred,
            **self._start_stats(worker),
            "model_bytes_resumed": self.resumed_bytes,
            "authenticated": self.authenticated,
            "model_sha256": self.hello.model_sha256 if self.hello else None,
            # Keyframe requests are RTCP PLIs from the jitter buffer when it gives up on lost packets.
            "keyframe_requests": sum(b.plis for b in self.jitter_buffers),
            "probe_results": self.probes.results,
            "feedbacks": self.arrivals.sent if self.arrivals is not None else 0,
            **self._jitter_stats(),
            "timestamps_anchored": self.mapper.anchored if self.mapper else None,
            "session_s": round(time.monotonic() - self.began, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),  # this process's own (ru_maxrss carries a parent's peak over exec)
        })
        return stats

    def _start_stats(self, worker: dict) -> dict:
        """How the call started: time to the first shown frame and to the model (from the answer to the
        sender's offer). The worker's stats say what was shown before the model (frames_before_model,
        psnr_before_model / psnr_after_model)."""
        first = worker.get("first_output_time")
        return {
            "early_start": bool(self.config and self.config.early),
            "time_to_first_frame_ms": round((first - self.began_wall) * 1000, 1) if first else None,
            "time_to_model_ms": round((self.model_ready_wall - self.began_wall) * 1000, 1) if self.model_ready_wall else None,
        }

    def _jitter_stats(self) -> dict:
        stats = [b.stats() for b in self.jitter_buffers]
        recoveries = [ms for s in stats for ms in s["recovery_ms"]]
        return {
            "jitter_skips": sum(s["jitter_skips"] for s in stats),
            "frames_skipped_jitter": sum(s["frames_skipped_jitter"] for s in stats),
            "recovery_ms": recoveries,
            "recovery_ms_max": max(recoveries) if recoveries else None,
            "frames_by_codec": dict(sum((collections.Counter(s["frames_by_codec"]) for s in stats),
                                        collections.Counter())),
        }


@dataclass
class PartialModel:
    """The bytes of a model whose transfer a dropped connection interrupted (whole chunks), kept for the
    sender's retry."""

    sha256: str
    size: int
    data: bytes


class SessionFailed(Exception):
    """A session ended without a complete stream (refused, dropped, or the peer misbehaved)."""


class Receiver:
    """Listens for offers; runs one session at a time; `run()` returns the stats of the first complete one."""

    def __init__(self, options: ReceiveOptions):
        self.options = options
        self.session: Session | None = None
        self.port: int | None = None
        self._completed: asyncio.Future | None = None
        self.failures: list[str] = []
        # At most one interrupted model transfer (bounded by the announced size, itself <= MAX_MODEL_BYTES).
        self.partial: PartialModel | None = None

    async def _answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        active = self.session
        if active is not None and not active.done.done():
            idle = time.monotonic() - active.last_heard
            if active.state not in ("hello", "config", "model") or idle < STALLED_HANDSHAKE_S:
                raise Busy("receiver busy with another session")
            active.resumable = active.state == "model"
            await active.close(f"superseded by a new sender after {idle:.0f} s without a message")
        session = Session(self)
        self.session = session
        session.done.add_done_callback(lambda done: self._session_done(session, done))
        await session.pc.setRemoteDescription(offer)
        session.jitter_buffers = jitter.install(session.pc)
        session.probes.datagrams = DatagramCounter(session.pc)  # what arrives beside a probe's padding
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._check_handshake, session)
        return session.pc.localDescription

    def _check_handshake(self, session: Session) -> None:
        if session.state in HANDSHAKE_STATES and not session.done.done():
            session.resumable = session.state == "model"
            asyncio.ensure_future(session.close("handshake timed out"))

    def _session_done(self, session: Session, done: asyncio.Future) -> None:
        if done.exception() is not None and session.resumable and session.model_data:
            # Only chunks from a sender that proved the shared secret (when there is one); the whole model is
            # checked against its SHA-256 at the end in any case.
            if self.options.secret is None or session.authenticated:
                self.partial = PartialModel(session.hello.model_sha256, session.hello.model_bytes,
                                            bytes(session.model_data))
        if done.exception() is not None:
            self.failures.append(str(done.exception()))
            log.error("session failed: %s", done.exception())
        elif not self._completed.done():
            self._completed.set_result(done.result())

    def live_stats(self) -> dict:
        """The current session's numbers while it runs (the live view's page polls them)."""
        session = self.session
        if session is None:
            return {"state": "waiting for a sender"}
        stats: dict = {"state": session.state}
        if session.hello is not None:
            sha = session.hello.model_sha256[:12]
            if session.state == "model" or session.awaiting_model:
                shown = " (bicubic shown meanwhile)" if session.awaiting_model else ""
                stats["model"] = f"{sha}: receiving {len(session.model_data):,} of {session.hello.model_bytes:,} bytes{shown}"
            elif session.codec is not None:
                stats["model"] = f"{sha}: {'transferred' if session.model_transferred else 'held here'}, " \
                                 f"{session.model_bytes:,} bytes" + (f", update v{session.update_version}" if session.update_version else "")
            else:
                stats["model"] = f"{sha}: {session.state}"
        worker = session.worker
        if worker is not None:
            stats.update({
                "frames_out": worker.frames_out, "frames_received": worker.frames_received,
                "frames_concealed": (worker.reconstructor.concealed if worker.reconstructor else 0) + worker.concealed_before_model,
                "frames_dropped_backlog": worker.frames_dropped,
                "rebuild": f"{worker.reconstructor.method} x{worker.reconstructor.iterations}" if worker.reconstructor
                           else "bicubic (no model yet)",
            })
            latency = worker.latencies.values()
            if len(latency):
                # The last 30 frames' (in arrival order until the reservoir is full; a random sample after).
                stats["latency_ms"] = round(float(np.median(latency[-30:])), 1)
            if worker.psnr.count:
                stats["psnr"], stats["psnr_bicubic"] = round(worker.psnr.mean, 2), round(worker.psnr_bicubic.mean, 2)
        stats["video_bytes_received"] = sum(b.bytes_received for b in session.jitter_buffers) if session.jitter_buffers else None
        return stats

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._completed = asyncio.get_running_loop().create_future()
        self._runner, self.port = await serve(self.options.host, self.options.port, self._answer)
        return self.port

    async def wait(self, timeout: float | None = None) -> dict:
        try:
            stats = await asyncio.wait_for(asyncio.shield(self._completed), timeout)
            # The stats are final before our bye goes out: let the session finish its goodbye (closing now
            # could overtake the bye on a link that delays and reorders, and the sender would see a dropped
            # connection instead of a complete session).
            if self.session is not None:
                try:
                    await asyncio.wait_for(self.session.said_bye.wait(), BYE_LINGER_S + 1.0)
                except asyncio.TimeoutError:
                    pass
            return stats
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.pc.close()
        await self._runner.cleanup()
