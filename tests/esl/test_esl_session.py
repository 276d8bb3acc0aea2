"""The outbound ESL session, sans-IO: bytes and commands in, replies and events out.

Event lists first (each a situation a real FreeSWITCH produced), then every outbound
capture replayed through the session, then the property the wire promises: replies in
command order, events anywhere, frames split at any byte, and the session yields the
same replies and the same events whatever the interleaving.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs_consent import esl
from fs_consent.esl.session import ChannelEvent, Closed, Completed, Connected, Lingering, OutboundSession, Reply, State

CHANNEL = "0f0e0154-48b7-492c-80a6-5e9e6346c411"
OTHER_LEG = "5a1e6d6c-2a8f-4d4e-9d7e-3f1d1b7a0c11"


def connect_reply(uuid: str = CHANNEL) -> bytes:
    return esl.encode_connect_reply([("Event-Name", "CHANNEL_DATA"), ("Unique-ID", uuid),
                                     ("Caller-Caller-ID-Number", "0612345678")])


def event(name: str, uuid: str = CHANNEL, **headers: str) -> bytes:
    return esl.encode_event([("Event-Name", name), ("Unique-ID", uuid),
                             *((k.replace("_", "-"), v) for k, v in headers.items())])


def opened(**kwargs) -> OutboundSession:
    session = OutboundSession(**kwargs)
    session.send_connect("connect")
    items = session.receive(connect_reply())
    assert [type(i) for i in items] == [Connected]
    return session


# --- event lists ----------------------------------------------------------------------


def test_the_connect_reply_names_the_channel():
    session = OutboundSession()
    assert session.send_connect("c") == b"connect\n\n"
    [connected] = session.receive(connect_reply())
    assert connected == Connected("c", CHANNEL, connected.headers)
    assert connected.headers["Caller-Caller-ID-Number"] == "0612345678"
    assert session.channel_uuid == CHANNEL and session.state is State.OPEN


def test_an_event_between_a_command_and_its_reply_is_not_taken_for_the_reply():
    """The handshake defect: CHANNEL_PARK after '+OK will linger', before the reply to 'event plain'."""
    session = opened()
    session.send_command("myevents", "myevents")
    session.send_command("linger", "linger")
    session.send_command("event plain RECORD_START RECORD_STOP", "event")
    items = session.receive(esl.encode_reply("+OK Events Enabled") + esl.encode_reply("+OK will linger")
                            + event("CHANNEL_PARK") + esl.encode_reply("+OK event listener enabled plain"))
    assert [(type(i), getattr(i, "token", None)) for i in items] == [
        (Reply, "myevents"), (Reply, "linger"), (ChannelEvent, None), (Reply, "event")]
    assert items[2].event.name == "CHANNEL_PARK"
    assert items[3].text == "+OK event listener enabled plain" and items[3].ok


def test_execute_before_its_own_reply_and_completions_matched_by_event_uuid():
    """CHANNEL_EXECUTE can precede the sendmsg's +OK; two playbacks complete in the other order."""
    uuids = iter(["u-first", "u-second"])
    session = opened(new_event_uuid=lambda: next(uuids))
    first = session.send_execute("playback", "a.wav", "play-1")
    session.send_execute("playback", "b.wav", "play-2")
    assert b"Event-UUID: u-first\n" in first
    items = session.receive(
        event("CHANNEL_EXECUTE", Application="playback", Application_UUID="u-first")
        + esl.encode_reply("+OK") + esl.encode_reply("+OK")
        + event("CHANNEL_EXECUTE_COMPLETE", Application="playback", Application_UUID="u-second")
        + event("CHANNEL_EXECUTE_COMPLETE", Application="playback", Application_UUID="u-first"))
    assert [type(i) for i in items] == [ChannelEvent, Reply, Reply, Completed, Completed]
    assert [i.token for i in items[1:]] == ["play-1", "play-2", "play-2", "play-1"]


def test_a_completion_counts_once_and_one_nobody_asked_for_is_just_an_event():
    session = opened(new_event_uuid=lambda: "u-1")
    session.send_execute("answer", None, "answer-1")
    done = event("CHANNEL_EXECUTE_COMPLETE", Application="answer", Application_UUID="u-1")
    socket_done = event("CHANNEL_EXECUTE_COMPLETE", Application="socket")  # after a hang-up
    items = session.receive(esl.encode_reply("+OK") + done + done + socket_done)
    assert [type(i) for i in items] == [Reply, Completed, ChannelEvent, ChannelEvent]


def test_other_legs_events_are_filtered_out():
    session = opened()
    items = session.receive(event("DTMF", OTHER_LEG, DTMF_Digit="1") + event("DTMF", DTMF_Digit="5"))
    assert [(type(i), i.event.get("DTMF-Digit")) for i in items] == [(ChannelEvent, "5")]


def test_api_responses_are_replies_in_order_with_their_body_as_text():
    session = opened()
    session.send_api("uuid_record x stop /spool/r.wav", "stop")
    session.send_api("uuid_getvar nope x", "getvar")
    items = session.receive(esl.encode_api_response(b"+OK Success\n") + esl.encode_api_response(b"-ERR No such channel!\n"))
    assert [(i.token, i.ok) for i in items] == [("stop", True), ("getvar", False)]
    assert items[1].text == "-ERR No such channel!\n"


def test_linger_then_exit_then_goodbye_closes():
    session = opened()
    [lingering] = session.receive(esl.encode_disconnect_notice(CHANNEL, "loopback/consent-b", linger=True))
    assert lingering == Lingering() and session.state is State.LINGERING
    # events keep coming while lingering
    assert [type(i) for i in session.receive(event("CHANNEL_HANGUP_COMPLETE"))] == [ChannelEvent]
    assert session.send_exit() == b"exit\n\n"
    items = session.receive(esl.encode_reply("+OK bye")
                            + esl.encode_disconnect_notice(CHANNEL, "loopback/consent-b", linger=False))
    assert [type(i) for i in items] == [Reply, Closed]
    assert session.state is State.CLOSED
    assert session.receive(event("HEARTBEAT")) == []


@pytest.mark.parametrize("misuse", ["command before connect", "command after exit", "connect twice"])
def test_commands_out_of_place_are_refused(misuse):
    session = OutboundSession()
    if misuse == "command before connect":
        with pytest.raises(esl.ProtocolError):
            session.send_command("myevents")
        return
    session.send_connect()
    if misuse == "connect twice":
        with pytest.raises(esl.ProtocolError):
            session.send_connect()
        return
    session.send_exit()
    with pytest.raises(esl.ProtocolError):
        session.send_api("status")


def test_a_reply_to_no_command_is_a_protocol_error():
    session = opened()
    with pytest.raises(esl.ProtocolError, match="no command"):
        session.receive(esl.encode_reply("+OK"))


def test_a_connect_reply_without_a_channel_is_a_protocol_error():
    session = OutboundSession()
    session.send_connect()
    with pytest.raises(esl.ProtocolError, match="Unique-ID"):
        session.receive(esl.encode_reply("+OK"))


# --- captures replayed ------------------------------------------------------------------


def outbound_captures(captures_dir: Path) -> list[str]:
    return sorted(p.name[: -len(".outbound.tx.bin")] for p in captures_dir.rglob("*.outbound.tx.bin"))


def replay_setup(captures_dir: Path, name: str):
    """The capture's commands sent through a session, which must produce the same bytes."""
    [tx] = list(captures_dir.rglob(f"{name}.outbound.tx.bin"))
    rx = tx.with_name(f"{name}.outbound.rx.bin").read_bytes()
    commands = esl.CommandParser().feed(tx.read_bytes())
    event_uuids = iter([c.headers["Event-UUID"] for c in commands if "Event-UUID" in c.headers])
    session = OutboundSession(new_event_uuid=lambda: next(event_uuids))
    apps = {}
    for index, command in enumerate(commands):
        sent = send(session, command, index)
        if command.line == "sendmsg" and command.headers.get("call-command") == "execute":
            apps[index] = command.headers["execute-app-name"]
        if "Event-UUID" in command.headers or command.line != "sendmsg":
            assert esl.CommandParser().feed(sent) == [command]
    return session, rx, commands, apps


def send(session: OutboundSession, command: esl.Command, token: int) -> bytes:
    line = command.line
    if line == "connect":
        return session.send_connect(token)
    if line == "exit":
        return session.send_exit(token)
    if line.startswith("api "):
        return session.send_api(line[4:], token)
    if line == "sendmsg" and command.headers.get("call-command") == "execute":
        if "Event-UUID" in command.headers:
            return session.send_execute(command.headers["execute-app-name"],
                                        command.headers.get("execute-app-arg"), token)
        # greenswitch's layout (no Event-UUID): what FreeSWITCH answers is still a reply in order
    return session.send_command(line, token) if line != "sendmsg" else _raw(session, token)


def _raw(session: OutboundSession, token: int) -> bytes:
    """A sendmsg without Event-UUID (older captures): counted for reply order only."""
    session._sendable()
    session._awaiting.append((token, False))
    return b""


def test_every_outbound_capture_replays_with_replies_in_command_order(captures_dir):
    names = outbound_captures(captures_dir)
    assert len(names) >= 9
    for name in names:
        session, rx, commands, apps = replay_setup(captures_dir, name)
        items = session.receive(rx)
        replies = [i.token for i in items if isinstance(i, (Reply, Connected))]
        assert replies == list(range(len(replies))), name
        assert len(replies) == len(commands) - session.awaiting_replies, name
        for item in items:
            if isinstance(item, Completed):
                assert item.event.get("Application") == apps[item.token], name


def test_the_event_uuid_capture_completes_every_execute_by_its_own_uuid(captures_dir):
    session, rx, _commands, apps = replay_setup(captures_dir, "s9_digit_pressed_event_uuid")
    items = session.receive(rx)
    completed = [i.token for i in items if isinstance(i, Completed)]
    assert sorted(completed) == sorted(apps)  # each execute completed exactly once
    prompt = next(i for i in items if isinstance(i, Completed) and apps[i.token] == "play_and_get_digits")
    assert prompt.event.get("variable_consent_digit") == "1"
    assert isinstance(items[-1], Closed)


# --- the property ------------------------------------------------------------------------


@functools.cache
def _frames(rx: bytes) -> list[tuple[bool, bytes]]:
    """(is a reply, the frame's bytes) for each frame of a capture, in wire order."""
    out, rest = [], rx
    parser = esl.FrameParser()
    while rest:
        for size in range(1, len(rest) + 1):
            messages = parser.feed(rest[size - 1:size])
            if messages:
                [message] = messages
                out.append((message.content_type in ("command/reply", "api/response"), rest[:size]))
                rest = rest[size:]
                break
        else:
            raise AssertionError("capture ends inside a frame")
    return out


def _summary(items: list) -> tuple[list, list]:
    replies = [(i.token, getattr(i, "text", "")) for i in items if isinstance(i, (Reply, Connected))]
    others = [(type(i).__name__, getattr(i, "token", None),
               i.event.name if hasattr(i, "event") else None) for i in items
              if not isinstance(i, (Reply, Connected))]
    return replies, others


S9 = "s9_digit_pressed_event_uuid"


@settings(max_examples=300, deadline=None)
@given(order=st.lists(st.booleans(), min_size=200, max_size=200),
       cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=200))
def test_any_interleaving_and_any_split_yields_the_same_replies_and_events(captures_dir, order, cuts):
    """Replies keep command order, events keep theirs; where events fall among the replies,
    and where TCP splits the bytes, changes nothing the session yields."""
    session, rx, _commands, _apps = replay_setup(captures_dir, S9)
    expected = _summary(session.receive(rx))
    frames = list(_frames(rx))
    connect, body, goodbye = frames[0], frames[1:-1], frames[-1]  # events need the channel; goodbye ends it
    replies = [f for is_reply, f in body if is_reply]
    events = [f for is_reply, f in body if not is_reply]
    wire, choices = [connect[1]], iter(order)
    while replies or events:
        take_reply = next(choices, True) if replies and events else bool(replies)
        wire.append((replies if take_reply else events).pop(0))
    data = b"".join(wire) + goodbye[1]
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(data[at:at + cut])
        at += cut
    chunks.append(data[at:])

    session, *_ = replay_setup(captures_dir, S9)
    items = [item for chunk in chunks for item in session.receive(chunk)]
    replies_seen, others_seen = _summary(items)
    assert replies_seen == expected[0]
    assert others_seen == expected[1]  # events, completions and notices: the same, in their own order
