"""The load client's frame parser against websockets' own parser, on random frame streams.

``loadtest.client.frames.FrameParser`` replaces websockets' Sans-I/O parser on
the load generator's hot path; these properties show that the two agree: the
same frames from any valid stream (fragmented messages, control frames between
fragments, every length encoding, cut anywhere), and the same close code from
any stream with a bad header.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Opcode
from websockets.protocol import CLIENT, SERVER, Protocol

from loadtest.client import frames

MAX_SIZE = 1000  # small, so that "too big" is reachable


def encode(opcode: int, payload: bytes, *, fin: bool = True, width: int = 0, head1_extra=0):
    """An unmasked (server) frame; ``width`` 7, 16 or 64 picks the length encoding
    (0: the smallest that fits), so non-minimal encodings are produced too."""
    length = len(payload)
    if not width:
        width = 7 if length < 126 else 16 if length < 65536 else 64
    head1 = (0x80 if fin else 0) | opcode | head1_extra
    if width == 7:
        head = bytes((head1, length))
    elif width == 16:
        head = struct.pack("!BBH", head1, 126, length)
    else:
        head = struct.pack("!BBQ", head1, 127, length)
    return head + payload


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """``stream`` split at ``points`` (any byte offsets)."""
    bounds = sorted({p % (len(stream) + 1) for p in points} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def websockets_parse(chunks: list[bytes], max_size: int | None) -> tuple[list, int | None]:
    """Frames websockets' client-side protocol reads, up to its first close frame,
    and the close code it fails with (None if it does not)."""
    protocol = Protocol(CLIENT, max_size=max_size)
    events = []
    for chunk in chunks:
        protocol.receive_data(chunk)
        events.extend(protocol.events_received())
        if protocol.parser_exc is not None or protocol.close_rcvd is not None:
            break
    frames_read = [(int(f.opcode), f.fin, bytes(f.data)) for f in events]
    failed = protocol.parser_exc is not None
    return frames_read, (protocol.close_sent.code if failed else None)


def our_parse(chunks: list[bytes], max_size: int) -> tuple[list, int | None]:
    """What the client's receive path reads: each chunk through ``whole_text``, then
    ``feed`` when it is not one whole text frame (as ``ChatClient.on_readable`` does)."""
    parser = frames.FrameParser(max_size)
    read = []
    try:
        for chunk in chunks:
            payload = parser.whole_text(chunk)
            if payload is not None:
                read.append((frames.OP_TEXT, True, bytes(payload)))
                continue
            read.extend((op, fin, bytes(p)) for op, fin, p in parser.feed(chunk))
    except frames.FrameError as exc:
        read.extend((op, fin, bytes(p)) for op, fin, p in exc.frames)
        return read, exc.code
    return read, None


# -- strategies ----------------------------------------------------------------------------

widths = st.sampled_from([0, 7, 16, 64])
control_payloads = st.binary(max_size=125)


@st.composite
def control_frame(draw) -> bytes:
    opcode = draw(st.sampled_from([frames.OP_PING, frames.OP_PONG]))
    return encode(opcode, draw(control_payloads), width=draw(widths))


@st.composite
def message(draw) -> bytes:
    """One text or binary message, possibly fragmented, with control frames between."""
    opcode = draw(st.sampled_from([frames.OP_TEXT, frames.OP_BINARY]))
    payload = draw(st.binary(max_size=300))
    pieces = draw(st.integers(min_value=1, max_value=4))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=pieces - 1)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out = b""
    for i, part in enumerate(parts):
        width = draw(widths)
        if width == 7 and len(part) >= 126:
            width = 16
        first, last = i == 0, i == len(parts) - 1
        out += encode(opcode if first else frames.OP_CONT, part, fin=last, width=width)
        if i < len(parts) - 1:
            out += b"".join(draw(st.lists(control_frame(), max_size=2)))
    return out


@st.composite
def close_frame(draw) -> bytes:
    code = draw(st.sampled_from([1000, 1001, 1008, 1011, 3000, 4999]))
    reason = draw(st.text(max_size=20)).encode()[:100]
    return encode(frames.OP_CLOSE, struct.pack("!H", code) + reason, width=draw(widths))


@st.composite
def valid_stream(draw) -> bytes:
    items = draw(st.lists(st.one_of(message(), control_frame()), max_size=8))
    stream = b"".join(items)
    if draw(st.booleans()):
        stream += draw(close_frame())
    return stream


@st.composite
def raw_frame(draw) -> bytes:
    """A frame with random header bits: any opcode, rsv bits, mask bit, fin; any length up
    to past the size limit."""
    head1 = draw(st.integers(0, 255))
    payload = draw(st.binary(max_size=MAX_SIZE + 200))
    width = draw(widths)
    if width == 7 and len(payload) >= 126:
        width = 16
    frame = encode(0, payload, width=width)
    mask_bit = 0x80 if draw(st.integers(0, 3)) == 0 else 0
    frame = bytes((head1, frame[1] | mask_bit)) + frame[2:]
    if draw(st.integers(0, 7)) == 0:  # a length over the limit, announced in the header
        frame = bytes((head1, 127 | mask_bit)) + struct.pack(
            "!Q", draw(st.integers(MAX_SIZE + 1, 2**63 - 1))
        )
    return frame


@st.composite
def any_close_frame(draw) -> bytes:
    """A close frame with any code and any reason bytes (valid UTF-8 or not)."""
    body = draw(st.one_of(st.binary(max_size=1), st.binary(min_size=2, max_size=20)))
    if len(body) >= 2 and draw(st.booleans()):
        body = (
            struct.pack(
                "!H", draw(st.sampled_from([999, 1000, 1004, 1005, 1015, 2999, 4000, 5000]))
            )
            + body[2:]
        )
    return encode(frames.OP_CLOSE, body)


@st.composite
def any_stream(draw) -> bytes:
    frame = st.one_of(message(), control_frame(), raw_frame(), any_close_frame())
    items = draw(st.lists(frame, max_size=6))
    return b"".join(items)


# -- properties ---------------------------------------------------------------------------

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream=valid_stream(), points=st.lists(st.integers(min_value=0), max_size=12))
def test_valid_streams_give_the_same_frames(stream, points):
    """Any valid frame stream, cut anywhere: the same frames as websockets, no error."""
    chunks = cut(stream, points)
    expected, expected_code = websockets_parse(chunks, max_size=2**20)
    read, code = our_parse(chunks, max_size=2**20)
    assert expected_code is None
    assert code is None
    assert read == expected


@SETTINGS
@given(stream=any_stream(), points=st.lists(st.integers(min_value=0), max_size=12))
def test_bad_streams_fail_with_the_same_close_code(stream, points):
    """Random header bits (rsv, opcode, mask, fin, lengths over the limit): the same frames
    before the failure, and the same close code, as websockets."""
    chunks = cut(stream, points)
    expected, expected_code = websockets_parse(chunks, max_size=MAX_SIZE)
    read, code = our_parse(chunks, max_size=MAX_SIZE)
    assert (read, code) == (expected, expected_code)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_length_encodings_at_their_boundaries(size):
    """Payloads at the 7/16/64-bit boundaries, fed one byte at a time and whole."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    stream = encode(frames.OP_BINARY, payload)
    expected, _ = websockets_parse([stream], max_size=None)
    assert our_parse([stream], max_size=2**20) == (expected, None)
    if size <= 65536:
        assert our_parse(cut(stream, list(range(len(stream)))), max_size=2**20) == (expected, None)


def test_parser_keeps_an_incomplete_frame_for_the_next_call():
    """A frame cut in its header or payload comes out whole once the rest arrives."""
    parser = frames.FrameParser()
    stream = encode(frames.OP_TEXT, b'{"type":"message"}') + encode(frames.OP_PING, b"p")
    assert parser.feed(stream[:1]) == []
    assert parser.feed(stream[1:5]) == []
    assert parser.buffered == 5
    assert parser.feed(stream[5:]) == [
        (frames.OP_TEXT, True, b'{"type":"message"}'),
        (frames.OP_PING, True, b"p"),
    ]
    assert parser.buffered == 0


@given(
    opcode=st.sampled_from([frames.OP_TEXT, frames.OP_BINARY, frames.OP_PING, frames.OP_CLOSE]),
    payload=st.binary(max_size=70_000),
)
@settings(max_examples=50, deadline=None)
def test_client_frames_are_masked_and_read_by_a_websockets_server(opcode, payload):
    """What the client sends is one masked frame that websockets' server side reads back."""
    if opcode in (frames.OP_PING, frames.OP_CLOSE):
        payload = payload[:125] if opcode == frames.OP_PING else frames.close_payload(1000, "bye")
    data = frames.client_frame(opcode, payload)
    assert data[1] & 0x80, "client frames must be masked"
    server = Protocol(SERVER, max_size=None)
    server.receive_data(data)
    [frame] = server.events_received()
    assert server.parser_exc is None
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode(opcode), True, payload)
