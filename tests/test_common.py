"""Unit tests of the Sans-I/O chat core: frames in, outcomes out, no sockets."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import ChatCore, CloseCode, ErrorCode, Limits, ProtocolError
from common.chat import DisconnectReason, DropReason
from common.config import ServerConfig, parse_config
from common.messages import Hello, Join, Say, parse_client_message
from common.ratelimit import TokenBucket
from common.rooms import RoomRegistry
from common.shared import Gap, SharedChatCore

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


def test_in_memory_core_knows_no_broker():
    """common/chat.py imports nothing of the broker: scale-out plugs in from common/shared.py."""
    tree = ast.parse((COMMON / "chat.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert imported.isdisjoint({"common.broker", "common.shared"}), imported


def test_disconnect_reason_rules():
    """Asked beats shutdown, which beats the close frames; 1011 sent and nothing back is a
    keepalive timeout; 1000/1001 from the peer is client_close; anything else error."""
    from websockets.frames import Close

    from common.reasons import disconnect_reason

    def reason(asked=None, shutting_down=False, sent=None, received=None):
        return disconnect_reason(
            asked,
            shutting_down=shutting_down,
            sent=None if sent is None else Close(sent, ""),
            received=None if received is None else Close(received, ""),
        )

    assert reason(DisconnectReason.RATE_LIMIT, True, 1008, 1008) is DisconnectReason.RATE_LIMIT
    assert reason(None, True, 1001, 1001) is DisconnectReason.SHUTDOWN
    assert reason(sent=1011) is DisconnectReason.TIMEOUT
    assert reason(sent=1011, received=1011) is DisconnectReason.ERROR
    assert reason(received=1000) is DisconnectReason.CLIENT_CLOSE
    assert reason(sent=1001, received=1001) is DisconnectReason.CLIENT_CLOSE
    assert reason(received=4000) is DisconnectReason.ERROR
    assert reason() is DisconnectReason.ERROR  # no close frame either way


def test_handshake_answers():
    """Pages for / and /healthz; past the socket limit overload, past max sessions capacity."""
    from common.http import answer, refused_upgrade
    from common.reasons import RejectReason

    def status(path, sessions=0, sockets=1):
        reply, why = answer(path, "t", sessions=sessions, sockets=sockets,
                            max_connections=2, max_sockets=10)  # fmt: skip
        return (reply and reply.status, why)

    assert status("/") == (200, None) and status("/healthz") == (200, None)
    assert status("/nope") == (404, None)
    assert status("/ws") == (None, None) and status("/ws?x=1", sessions=1) == (None, None)
    assert status("/ws", sessions=2) == (503, RejectReason.CAPACITY)
    assert status("/ws", sessions=2, sockets=10) == (503, RejectReason.OVERLOAD)
    assert status("/", sessions=2, sockets=10) == (200, None)  # pages are always served
    assert refused_upgrade("/ws", 403) and refused_upgrade("/ws?a=b", 400)
    assert not refused_upgrade("/ws", 101) and not refused_upgrade("/ws", 503)
    assert not refused_upgrade("/healthz", 404)


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


def test_room_names_bounded_by_max_room_chars():
    """Room names longer than Limits.max_room_chars are refused with bad_message."""
    limits = Limits(max_room_chars=5)
    assert parse_client_message('{"type":"join","room":"abcde"}', limits)[0] == Join("abcde")
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type":"join","room":"abcdef"}', limits)
    assert info.value.code is ErrorCode.BAD_MESSAGE and "1-5 characters" in info.value.message


def test_cli_defaults_are_the_config_defaults():
    """Without flags, both command lines give ServerConfig's and Limits' defaults."""
    for implementation in ("threaded", "async"):
        config = parse_config(implementation, 8100, 9100, [])
        assert config == dataclasses.replace(
            ServerConfig(), port=8100, metrics_port=9100, max_connections=config.max_connections
        )
        assert config.max_connections > 0  # 0 means: what the process can hold


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
    assert outcomes[4].close.disconnect is DisconnectReason.RATE_LIMIT
    assert all(o.dropped is DropReason.RATE_LIMITED for o in outcomes[2:])


def test_rate_limit_refills():
    """The bucket refills with time, and a served message resets the flood count."""
    bucket = TokenBucket(rate=2, burst=2, now=0)
    assert [bucket.allow(0) for _ in range(3)] == [True, True, False]
    assert bucket.allow(0.5) is True
    assert bucket.allow(0.5) is False
    # Two refusals in a row close at flood_tolerance=2, unless a served message comes between.
    core = ChatCore("test", Limits(messages_per_second=1, burst=1, flood_tolerance=2))
    s = ready(core, "A", now=0)  # hello took the only token
    ping = '{"type":"ping"}'
    assert [core.receive(s, ping, now=0).dropped for _ in range(2)] == [DropReason.RATE_LIMITED] * 2
    assert core.receive(s, ping, now=1).dropped is None  # refilled: served, the count restarts
    refused = [core.receive(s, ping, now=1) for _ in range(3)]
    assert [o.close is None for o in refused] == [True, True, False]


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


# Shared rooms (the broker protocol, without Redis)


def test_split_message_splices_seq():
    """A chat message encoded around its seq joins back to the message with that seq."""
    from common import broker
    from common.messages import Say, chat_message

    message = chat_message("r.1", 0, "ann", Say("r.1", 'he said ",\\"seq\\":0,"', "x", 1.5), 12.5)
    head, tail = broker.split_message(message)
    assert json.loads(head + b"42" + tail) == {**message, "seq": 42}


def test_envelopes_round_trip():
    """Pub/sub envelopes decode to their room, kind and seq or origin; others are ignored."""
    from common import broker

    env = broker.parse_envelope(b"twinchat:room:lobby", b'm 17 {"a":1}')
    expected = ("lobby", broker.Kind.MESSAGE, 17, b'{"a":1}')
    assert (env.room, env.kind, env.seq, env.payload) == expected
    env = broker.parse_envelope("twinchat:room:lobby", broker.presence_envelope("s1", b"{}"))
    assert (env.kind, env.origin, env.payload) == (broker.Kind.PRESENCE, "s1", b"{}")
    assert broker.parse_envelope(b"other:channel", b"m 1 {}") is None
    assert broker.parse_envelope(b"twinchat:room:x", b"m notanumber {}") is None


def test_shared_core_hands_say_and_join_to_the_broker():
    """In the shared core, say and join become broker work and nothing is sent yet."""
    core = SharedChatCore("test")
    a = ready(core, "A")
    outcome = core.receive(a, '{"type":"join","room":"r"}', now=0)
    assert outcome.sends == [] and outcome.join is not None and outcome.join.fetch_seq
    joined = core.complete_join(a, outcome.join, seq=7, members=3, history=[])
    [(_, message)] = frames(joined)
    assert (message["type"], message["seq"], message["members"]) == ("joined", 7, 3)
    outcome = core.receive(a, '{"type":"say","room":"r","text":"hi","id":"m1"}', now=0)
    assert outcome.sends == [] and outcome.publish is not None
    assert (outcome.publish.room, outcome.publish.ref) == ("r", "m1")


def test_shared_core_delivers_in_order_and_reports_gaps():
    """deliver() sends the next seq, drops seqs already delivered, and reports gaps."""
    core = SharedChatCore("test")
    a = ready(core, "A")
    pending = core.receive(a, '{"type":"join","room":"r"}', now=0).join
    core.complete_join(a, pending, seq=5, members=1, history=[])
    assert core.deliver("r", 6, b'{"seq":6}').delivered == 1
    assert core.local_rooms() == {"r": 6} and core.local_seq("r") == 6  # the position check
    assert core.local_seq("elsewhere") is None
    assert core.deliver("r", 6, b'{"seq":6}').sends == []  # duplicate
    gap = core.deliver("r", 9, b'{"seq":9}')
    assert gap.sends == [] and gap.gap == Gap("r", 6, 9)
    assert core.deliver("elsewhere", 1, b"{}").sends == []
    lost = core.lose_room("r", 9, "missed messages")
    assert [(s.connection, c.code) for s, c in lost.closes] == [("A", CloseCode.TRY_AGAIN_LATER)]
    assert core.local_rooms() == {} and core.local_seq("r") is None


def test_shared_core_replays_from_broker_history():
    """join with since replays from the broker's history; incomplete when it has a hole."""
    core = SharedChatCore("test")
    a = ready(core, "A")
    pending = core.receive(a, '{"type":"join","room":"r","since":2}', now=0).join
    history = [(3, b'{"seq":3}'), (4, b'{"seq":4}')]
    sends = frames(core.complete_join(a, pending, seq=4, members=1, history=history))
    assert [m.get("seq") for _, m in sends] == [4, 3, 4]  # joined (seq 4), then 3 and 4
    assert sends[0][1]["complete"] is True
    b = ready(core, "B")
    pending = core.receive(b, '{"type":"join","room":"r","since":1}', now=0).join
    sends = frames(core.complete_join(b, pending, seq=4, members=2, history=history))
    assert sends[0][1]["complete"] is False  # seq 2 is gone


def test_gc_pauses_are_timed_by_generation():
    """Every collection of the cyclic garbage collector is counted under its generation,
    in a histogram whose buckets add up to its count."""
    import gc

    from common import metrics

    pauses = metrics.GcPauses()
    gc.callbacks.append(pauses.on_gc)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses.on_gc)
    [family] = pauses.collect()
    counts = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts["0"] >= 1 and counts["2"] >= 1 and set(counts) == {"0", "1", "2"}
    top = [s for s in family.samples if s.labels.get("le") == "+Inf"]
    assert {s.labels["generation"]: s.value for s in top} == counts
