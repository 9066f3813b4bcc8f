"""Unit tests of the Sans-I/O chat core: frames in, outcomes out, no sockets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import ChatCore, CloseCode, ErrorCode, Limits, ProtocolError
from common.chat import DisconnectReason, DropReason
from common.messages import Hello, Join, Say, parse_client_message
from common.ratelimit import TokenBucket
from common.rooms import RoomRegistry

COMMON = Path(__file__).resolve().parent.parent / "common"
IO_MODULES = {
    "socket", "socketserver", "ssl", "select", "selectors", "threading", "_thread",
    "multiprocessing", "concurrent", "asyncio", "uvloop", "websockets", "prometheus_client",
    "redis", "urllib.request", "http.client", "http.server",
}  # fmt: skip


def frames(outcome) -> list[tuple[tuple, dict]]:
    """Decode an outcome's sends to (target connections, message) pairs."""
    return [(tuple(s.connection for s in targets), json.loads(p)) for targets, p in outcome.sends]


def ready(core: ChatCore, name: str, *rooms: str, now: float = 0.0):
    session = core.open(name, now=now)
    core.receive(session, json.dumps({"type": "hello", "name": name}), now=now)
    for room in rooms:
        core.receive(session, json.dumps({"type": "join", "room": room}), now=now)
    return session


def test_chat_logic_imports_no_io():
    """No module of common/ but metrics.py imports sockets, threads, asyncio or exporters."""
    offenders = []
    for path in COMMON.glob("*.py"):
        if path.name == "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n in IO_MODULES or n.split(".")[0] in IO_MODULES
            ]
    assert offenders == []


def test_hello_then_welcome():
    """A valid hello moves the session to ready and is answered with welcome."""
    core = ChatCore("test")
    s = core.open("A", now=0)
    [(targets, welcome)] = frames(core.receive(s, '{"type":"hello","name":"ann"}', now=0))
    assert targets == ("A",)
    assert welcome["type"] == "welcome" and welcome["implementation"] == "test"
    assert welcome["limits"]["history_size"] == 100


def test_say_fans_out_in_seq_order_to_all_members():
    """say reaches every member including the sender, seqs +1 from 1."""
    core = ChatCore("test")
    a, b = ready(core, "A", "r"), ready(core, "B", "r")
    for n in range(3):
        outcome = core.receive(a, json.dumps({"type": "say", "room": "r", "text": str(n)}), now=0)
        [(targets, message)] = frames(outcome)
        assert set(targets) == {"A", "B"}
        assert message["seq"] == n + 1
        assert outcome.delivered == 2
    assert b.rooms["r"].seq == 3


def test_presence_and_close():
    """Closing a session tells the other members of each of its rooms, once."""
    core = ChatCore("test")
    a, _b = ready(core, "A", "r", "s"), ready(core, "B", "r", "s")
    sends = frames(core.close(a))
    assert [(t, m["room"], m["event"], m["members"]) for t, m in sends] == [
        (("B",), "r", "leave", 1),
        (("B",), "s", "leave", 1),
    ]
    assert core.close(a).sends == []
    assert core.connections == 1


def test_rate_limit_then_flood_close():
    """Past the burst: rate_limited errors, then a 1008 close after flood_tolerance more."""
    core = ChatCore("test", Limits(messages_per_second=1, burst=3, flood_tolerance=2))
    s = ready(core, "A", now=0)  # hello used one token
    outcomes = [core.receive(s, '{"type":"ping"}', now=0) for _ in range(6)]
    kinds = [o.close.code if o.close else frames(o)[0][1]["type"] for o in outcomes]
    codes = [frames(o)[0][1].get("code") if o.sends else None for o in outcomes]
    assert kinds[:2] == ["pong", "pong"]
    assert codes[2:4] == ["rate_limited", "rate_limited"]
    assert outcomes[4].close is not None
    assert outcomes[4].close.code == CloseCode.POLICY_VIOLATION
    assert outcomes[4].close.reason is DisconnectReason.RATE_LIMIT
    assert all(o.dropped is DropReason.RATE_LIMITED for o in outcomes[2:])


def test_rate_limit_refills():
    """The bucket refills with time, and a served message resets the flood count."""
    bucket = TokenBucket(rate=2, burst=2, now=0)
    assert [bucket.allow(0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(0.5) is True
    assert bucket.allow(0.5) is False


def test_history_replay_and_completeness():
    """Replay returns what is retained after since; incomplete once history dropped some."""
    registry: RoomRegistry[str] = RoomRegistry(history_size=3, max_idle=10)
    room, _ = registry.add_member("r", "A")
    for n in range(5):
        room.append(lambda seq, n=n: f"m{n}".encode())
    assert room.replay(2) == ([b"m2", b"m3", b"m4"], True)
    assert room.replay(1) == ([b"m2", b"m3", b"m4"], False)
    assert room.replay(5) == ([], True)
    assert room.replay(6) == ([], False)


def test_idle_rooms_bounded():
    """Empty rooms keep their history for replay, but only max_idle of them."""
    registry: RoomRegistry[str] = RoomRegistry(history_size=3, max_idle=2)
    for name in ("a", "b", "c"):
        room, _ = registry.add_member(name, "X")
        room.append(lambda seq: b"m")
        registry.remove_member(room, "X")
    assert registry.get("a") is None
    assert registry.get("b").seq == 1 and registry.get("c").seq == 1
    assert registry.active == 0


def test_rooms_per_session_bounded():
    """A session cannot join more than max_rooms_per_session rooms."""
    core = ChatCore("test", Limits(max_rooms_per_session=2))
    s = ready(core, "A", "r1", "r2")
    [(_, error)] = frames(core.receive(s, '{"type":"join","room":"r3"}', now=0))
    assert error["code"] == ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"hello","name":"ann"}', Hello("ann")),
        ('{"type":"join","room":"a.b-c_d","since":4}', Join("a.b-c_d", 4)),
        ('{"type":"say","room":"r","text":"hi","id":"x","sent_at":1}', Say("r", "hi", "x", 1)),
        (b'{"type":"say","room":"r","text":"\xc3\xa9"}', Say("r", "\u00e9")),
    ],
)
def test_parse_valid(data, expected):
    """Valid messages parse to their dataclasses."""
    assert parse_client_message(data, Limits())[0] == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "join", "leave", "say", "ping", "x"]) | json_values},
    optional={
        "name": json_values, "room": json_values, "text": json_values,
        "since": json_values, "id": json_values, "sent_at": json_values, "t": json_values,
    },
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.binary() | st.text() | json_values.map(json.dumps) | message_like.map(json.dumps))
def test_parser_never_raises_anything_but_protocol_error(data):
    """Any input parses to a message or a ProtocolError with a protocol error code."""
    try:
        message, _ref = parse_client_message(data, Limits())
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode)
        assert exc.ref is None or isinstance(exc.ref, str)
    else:
        assert type(message).__name__ in {"Hello", "Join", "Leave", "Say", "Ping"}


@settings(max_examples=200, deadline=None)
@given(st.lists(message_like.map(json.dumps) | st.text(), max_size=20))
def test_core_never_raises_and_always_answers(frames_in):
    """Whatever a client sends, the core answers each frame or closes, never raises."""
    core = ChatCore("test")
    other = ready(core, "B", "r")
    s = core.open("A", now=0)
    for n, data in enumerate(frames_in):
        outcome = core.receive(s, data, now=n)  # one frame a second: never rate limited
        assert outcome.sends or outcome.close, data
    core.close(s)
    assert core.sessions == {other}
