"""WebSocket frames as a load-generating client needs them (RFC 6455), without I/O.

Server → client: :class:`FrameParser` splits the byte stream from a server
into frames. Server frames are never masked, so a frame is a 2-byte header,
an optional 2- or 8-byte length and the payload; the parser takes whatever
``recv`` returned (any number of frames, and a frame split anywhere) and
returns every complete frame as ``(opcode, fin, payload)``, keeping the rest
for the next call. It checks what websockets' own parser checks
(``websockets.protocol.Protocol`` on the client side: reserved bits, opcode,
masking, control-frame rules, continuation order, size limit) and raises
:class:`FrameError` with the close code to send; a property test compares the
two parsers on random streams (``tests/test_client_frames.py``). It does not
decode text: the caller parses JSON from the bytes, which rejects invalid
UTF-8 anyway.

Client → server: :func:`client_frame` builds a masked frame (a fresh random
mask for every frame, as the RFC requires of clients).
"""

from __future__ import annotations

import os
import struct

from websockets.frames import apply_mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# Close codes (RFC 6455 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

MAX_MESSAGE_SIZE = 2**20  # bytes of one message (all its fragments), as websockets' default

Frame = tuple[int, bool, bytes]
"""``(opcode, fin, payload)``."""


class FrameError(Exception):
    """The server sent something that is not a valid frame stream.

    ``code`` is the close code to answer with (1002 protocol error, 1007 bad
    close reason, 1009 too big); ``frames`` the valid frames that came before
    the bad one in the same ``feed``.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames: list[Frame] = []  # the valid frames read before the bad one


class FrameParser:
    """Incremental parser of one server's frames. Not thread-safe; one per connection.

    ``feed(data)`` returns the complete frames in ``data`` (plus what earlier
    calls left over) in order. After a :class:`FrameError` the stream is
    unusable: close the connection.
    """

    __slots__ = ("_buffer", "_closed", "_fragmented", "_message_size", "_need", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        if max_size < 125:
            raise ValueError("max_size must allow a 125-byte control frame")
        self.max_size = max_size
        self._buffer = b""  # bytes of an incomplete frame
        self._need = 0  # bytes the buffered frame needs in all, when known
        self._fragmented = False  # inside a fragmented message
        self._message_size = 0  # bytes of the fragmented message so far
        self._closed = False  # a close frame was read

    @property
    def buffered(self) -> int:
        """Bytes held back because their frame is not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """The complete frames of the stream so far, in order; nothing after a close frame.

        Raises :class:`FrameError` on the first invalid frame; the valid frames
        before it are in its ``frames``. Nothing is parsed after an error.
        """
        if self._closed:
            return []
        if self._buffer:
            if len(self._buffer) + len(data) < self._need:
                self._buffer += data  # a big frame arriving in pieces: wait for all of it
                return []
            data = self._buffer + data
            self._buffer = b""
        self._need = 0
        frames: list[Frame] = []
        try:
            return self._parse(data, frames)
        except FrameError as exc:
            exc.frames = frames
            self._closed = True
            raise

    def whole_text(self, data: bytes) -> bytes | None:
        """The payload when ``data`` is exactly one whole, unfragmented text frame and the
        parser holds nothing (the usual case: one chat message per ``recv``); else None,
        and ``data`` goes to :meth:`feed` as usual. Never changes the parser's state.

        The same frame :meth:`feed` would return, without building a list of tuples.
        """
        if self._buffer or self._fragmented or self._closed or len(data) < 2 or data[0] != 0x81:
            return None
        length = data[1]
        if length < 126:
            return data[2:] if len(data) == length + 2 else None
        if length == 126 and len(data) > 4:
            length = (data[2] << 8) | data[3]
            if len(data) == length + 4 and length <= self.max_size:
                return data[4:]
        return None

    def _parse(self, data: bytes, frames: list[Frame]) -> list[Frame]:
        size = len(data)
        pos = 0
        while size - pos >= 2:
            head1 = data[pos]
            head2 = data[pos + 1]
            if head1 == 0x81 and not self._fragmented:
                # The hot paths: a whole text frame under 126 bytes (max_size >= 125), or
                # under 64 KiB and within max_size (a chat message is 150-250 bytes).
                if head2 < 126:
                    end = pos + 2 + head2
                    if end > size:
                        break
                    frames.append((OP_TEXT, True, data[pos + 2 : end]))
                    pos = end
                    continue
                if head2 == 126 and size - pos >= 4:
                    end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
                    if end <= size and end - pos - 4 <= self.max_size:
                        frames.append((OP_TEXT, True, data[pos + 4 : end]))
                        pos = end
                        continue
            # The checks below follow the order of websockets' parser (Frame.parse,
            # then Protocol.recv_frame), so that both report the same close code.
            opcode = head1 & 0x0F
            if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "invalid opcode")
            if head2 & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "incorrect masking")
            length = head2
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", data, start)
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", data, start)
                start += 8
            limit = self.max_size - self._message_size if self._fragmented else self.max_size
            if length > limit:
                raise FrameError(CLOSE_TOO_BIG, "message too big")
            end = start + length
            if end > size:
                self._need = end - pos
                break
            fin = bool(head1 & 0x80)
            if head1 & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits must be 0")
            payload = data[start:end]
            if opcode in CONTROL_OPCODES:
                if length > 125:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "control frame too long")
                if not fin:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                if opcode == OP_CLOSE:
                    check_close_payload(payload)
                    if self._fragmented:
                        raise FrameError(CLOSE_PROTOCOL_ERROR, "incomplete fragmented message")
                    # RFC 6455 1.4: after a close frame, the rest is discarded.
                    self._closed = True
                    frames.append((opcode, fin, payload))
                    return frames
            elif opcode == OP_CONT:
                if not self._fragmented:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
                self._message_size += length
                if fin:
                    self._fragmented = False
                    self._message_size = 0
            else:
                if self._fragmented:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
                if not fin:
                    self._fragmented = True
                    self._message_size = length
            frames.append((opcode, fin, payload))
            pos = end
        if pos < size:
            self._buffer = data[pos:]
        return frames


def check_close_payload(payload: bytes) -> None:
    """Raise :class:`FrameError` unless ``payload`` is a valid close frame body."""
    if not payload:
        return
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame too short")
    try:
        payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from exc
    code = close_code(payload)
    if not (code in _EXTERNAL_CLOSE_CODES or 3000 <= code < 5000):
        raise FrameError(CLOSE_PROTOCOL_ERROR, "invalid status code")


# Codes a peer may send (RFC 6455 7.4.1 and the IANA registry), as websockets checks.
_EXTERNAL_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005 when it has none)."""
    if len(payload) >= 2:
        return int.from_bytes(payload[:2], "big")
    return CLOSE_NO_STATUS


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame: 2-byte code and a UTF-8 reason."""
    return code.to_bytes(2, "big") + reason.encode()
