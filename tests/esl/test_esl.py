"""The ESL codec against every captured byte, and against arbitrary bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_consent import esl

CONNECT_ENVELOPE = ("Content-Type", "Reply-Text", "Socket-Mode", "Control")


def _chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, start = [], 0
    for size in sizes:
        if start >= len(data):
            break
        chunks.append(data[start : start + size])
        start += size
    chunks.append(data[start:])
    return chunks


def _frame(message: esl.Message) -> bytes:
    """Plain re-serialisation for the frame types no encoder is for (auth/request, log/data)."""
    head = "".join(f"{name}: {value}\n" for name, value in message.headers.items())
    return head.encode() + b"\n" + message.body


def reencode(message: esl.Message) -> bytes:
    """The message written back with the FreeSWITCH-side encoders."""
    kind, headers = message.content_type, message.headers
    if kind == "text/event-plain":
        event = message.event()
        return esl.encode_event(event.items, event.body)
    if kind == "command/reply" and "Event-Name" in headers:
        channel = [(n, v) for n, v in headers.items() if n not in CONNECT_ENVELOPE]
        assert list(headers)[-4:] == list(CONNECT_ENVELOPE)
        assert headers["Reply-Text"] == "+OK\n"
        return esl.encode_connect_reply(
            channel, socket_mode=headers["Socket-Mode"], control=headers["Control"]
        )
    if kind == "command/reply":
        assert list(headers)[:2] == ["Content-Type", "Reply-Text"]
        return esl.encode_reply(headers["Reply-Text"], list(headers.items())[2:])
    if kind == "api/response":
        return esl.encode_api_response(message.body)
    if kind == "text/disconnect-notice":
        linger = headers.get("Content-Disposition") == "linger"
        return esl.encode_disconnect_notice(
            headers.get("Controlled-Session-UUID"),
            headers.get("Channel-Name", ""),
            linger=linger,
            linger_time=int(headers.get("Linger-Time", "-1")),
        )
    assert kind in ("auth/request", "log/data"), kind
    return _frame(message)


def reencode_command(command: esl.Command) -> bytes:
    """The command written back with the client-side encoders."""
    h = command.headers
    if command.line == "sendmsg" and h.get("call-command") == "execute":
        assert set(h) <= {"call-command", "execute-app-name", "execute-app-arg", "Event-UUID"}
        return esl.encode_execute(
            h["execute-app-name"], h.get("execute-app-arg"), event_uuid=h.get("Event-UUID")
        )
    if command.line == "sendmsg":
        assert list(h) == ["call-command", "hangup-cause"] and h["call-command"] == "hangup"
        return esl.encode_hangup(h["hangup-cause"])
    assert not h and not command.body
    if command.line.startswith("api "):
        return esl.encode_api(command.line[4:])
    return esl.encode_command(command.line)


# ------------------------------------------------------------------ captures


def test_every_rx_capture_reencodes_byte_exact(rx_capture, captures_dir):
    """Parsing loses nothing and the encoders (URL-encoding included) write FreeSWITCH's bytes."""
    data = (captures_dir / f"{rx_capture}.rx.bin").read_bytes()
    messages = esl.FrameParser().feed(data)
    assert messages
    assert b"".join(reencode(m) for m in messages) == data


def test_every_tx_capture_reencodes_byte_exact(tx_capture, captures_dir):
    data = (captures_dir / f"{tx_capture}.tx.bin").read_bytes()
    commands = esl.CommandParser().feed(data)
    assert commands
    assert b"".join(reencode_command(c) for c in commands) == data


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["rx", "tx"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=4000), max_size=200))
def test_chunking_never_changes_the_result(direction, sizes, captures_dir):
    parser_type = esl.FrameParser if direction == "rx" else esl.CommandParser
    for path in sorted(captures_dir.rglob(f"*.{direction}.bin")):
        data = path.read_bytes()
        whole = parser_type().feed(data)
        parser, pieces = parser_type(), []
        for chunk in _chunked(data, sizes):
            pieces += parser.feed(chunk)
        assert pieces == whole, path.name


def test_one_byte_at_a_time(captures_dir):
    data = (captures_dir / "s9_digit_pressed_event_uuid.outbound.rx.bin").read_bytes()
    parser = esl.FrameParser()
    messages = [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]
    assert messages == esl.FrameParser().feed(data)


# ------------------------------------------------------------------ message API


def test_connect_reply_values_are_url_decoded(captures_dir):
    data = (captures_dir / "s9_digit_pressed_event_uuid.outbound.rx.bin").read_bytes()
    connect, events_enabled = esl.FrameParser().feed(data)[:2]
    assert connect.reply_text == "+OK\n"
    assert connect.headers["Caller-Callee-ID-Name"] == "Outbound Call"
    assert connect.headers["variable_current_application_data"] == "127.0.0.1:8040 async full"
    assert events_enabled.reply_text == "+OK Events Enabled"
    assert events_enabled.content_type == "command/reply"


def test_event_fields_and_undef():
    raw = esl.encode_event(
        [("Event-Name", "CHANNEL_EXECUTE_COMPLETE"), ("Application-Response", "_undef_"),
         ("Hangup-Cause", "USER_BUSY"), ("Hangup-Cause", "NORMAL_CLEARING"), ("Phone", "+31 6/1%")]
    )
    (message,) = esl.FrameParser().feed(raw)
    event = message.event()
    assert event.name == "CHANNEL_EXECUTE_COMPLETE"
    assert event.get("Application-Response") is None
    assert event.get("Application-Response", "_none_") == "_none_"
    assert event.get("Missing", "x") == "x"
    assert event.headers["Hangup-Cause"] == "NORMAL_CLEARING"  # duplicates: last wins
    assert event.get("Phone") == "+31 6/1%"


def test_background_job_body_after_its_own_content_length(captures_dir):
    data = (captures_dir / "inbound_commands.rx.bin").read_bytes()
    jobs = [
        m.event() for m in esl.FrameParser().feed(data)
        if m.content_type == "text/event-plain" and m.event().name == "BACKGROUND_JOB"
    ]
    assert [j.body for j in jobs][1] == b"-ERR no_such_command Command not found!\n"
    assert jobs[0].body.startswith(b"UP 0 years")
    assert "Content-Length" not in jobs[0].headers


def test_event_on_a_reply_is_refused():
    (reply,) = esl.FrameParser().feed(esl.encode_reply("+OK"))
    with pytest.raises(esl.ProtocolError):
        reply.event()


# ------------------------------------------------------------------ encoders


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("+OK\n", "%2BOK%0A"),
        ("Sat, 28 Nov 2026 12:53:52 GMT", "Sat,%2028%20Nov%202026%2012%3A53%3A52%20GMT"),
        ("tone_stream://%(1000,0,440)", "tone_stream%3A//%25(1000,0,440)"),
        ("already %2B encoded", "already%20%2B%20encoded"),  # never double-encodes %XX
        ("lower %2b stays unsafe", "lower%20%252b%20stays%20unsafe"),
        ('"Test" <0612345678>', "%22Test%22%20%3C0612345678%3E"),
        ("é~\x7f", "%C3%A9~%7F"),
        ("a&b=c?d#e;f@g[h]i^j`k{l|m}n\\o", "a%26b%3Dc%3Fd%23e%3Bf%40g%5Bh%5Di%5Ej%60k%7Bl%7Cm%7Dn%5Co"),
        ("keeps -_.!*'(),/$", "keeps%20-_.!*'(),/$"),
    ],
)
def test_url_encode_follows_switch_url_encode(value, encoded):
    assert esl.url_encode(value) == encoded


@pytest.mark.slow
@given(st.text())
def test_url_encode_round_trips_without_percent_escapes(text):
    """Everything decodes back, except what FreeSWITCH itself leaves as ``%XX``."""
    from urllib.parse import unquote

    encoded = esl.url_encode(text.replace("%", "!"))
    assert unquote(encoded) == text.replace("%", "!")
    assert "\n" not in encoded and " " not in encoded


def test_client_encoders_layouts():
    assert esl.encode_command("myevents") == b"myevents\n\n"
    assert esl.encode_api("uuid_record u stop /s/a.wav") == b"api uuid_record u stop /s/a.wav\n\n"
    assert esl.encode_execute("answer") == (
        b"sendmsg\ncall-command: execute\nexecute-app-name: answer\n\n"
    )
    assert esl.encode_execute("playback", "x.wav", event_uuid="e1") == (
        b"sendmsg\ncall-command: execute\nexecute-app-name: playback\n"
        b"execute-app-arg: x.wav\nEvent-UUID: e1\n\n"
    )
    assert esl.encode_hangup() == b"sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: esl.encode_command("exit\n\napi uuid_kill x"),
        lambda: esl.encode_execute("set", "a=1\nexecute-app-name: hangup"),
        lambda: esl.encode_hangup("X\r"),
        lambda: esl.encode_reply("+OK\n"),
    ],
)
def test_encoders_refuse_line_breaks_that_would_inject_frames(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Content-Type command/reply\n\n", "without ': '"),
        (b": value\n\n", "empty name"),
        (b"Content-Length: 1a\n\n", "not a number"),
        (b"Content-Length: -1\n\n", "not a number"),
        (b"Content-Length: \xef\xbc\x91\n\n", "not a number"),
        (b"Content-Length: 99999999\n\n", "body limit"),
        (b"Caller: \xff0612345678\n\n", "not UTF-8"),
    ],
)
def test_malformed_frames_raise_protocol_error(data, message):
    with pytest.raises(esl.ProtocolError, match=message):
        esl.FrameParser().feed(data)


def test_header_block_limit_applies_before_the_block_ends():
    parser = esl.FrameParser(max_header_bytes=100)
    parser.feed(b"A: " + b"x" * 90)
    with pytest.raises(esl.ProtocolError, match="over 100 bytes"):
        parser.feed(b"x" * 20)


def test_body_limit():
    with pytest.raises(esl.ProtocolError, match="body limit"):
        esl.FrameParser(max_body_bytes=10).feed(b"Content-Length: 11\n\n")


def test_malformed_event_body_raises_protocol_error():
    body = b"Event-Name: X\nContent-Length: 5\n\nab"
    (message,) = esl.FrameParser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    )
    with pytest.raises(esl.ProtocolError, match="differs from its Content-Length"):
        message.event()


def test_errors_never_quote_header_values():
    number = "0612345678"
    for data in (
        f"Caller-Caller-ID-Number {number}\n\n".encode(),
        f"Content-Length: {number}x\n\n".encode(),
        f"X: {number}".encode() + b"\xff\n\n",
    ):
        with pytest.raises(esl.ProtocolError) as caught:
            esl.FrameParser().feed(data)
        assert number not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data, chunk):
    for parser_type in (esl.FrameParser, esl.CommandParser):
        parser = parser_type(max_header_bytes=256, max_body_bytes=256)
        try:
            for i in range(0, len(data), chunk):
                for message in parser.feed(data[i : i + chunk]):
                    if isinstance(message, esl.Message) and message.content_type == "text/event-plain":
                        message.event()
        except esl.ProtocolError:
            pass


frame_lines = st.lists(
    st.tuples(
        st.text("ABCDEFGHabc-_", min_size=1, max_size=8).filter(lambda n: n != "Content-Length"),
        st.text(max_size=20).map(lambda v: v.replace("%", "!")),  # %XX is kept, not escaped
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(frame_lines, st.binary(max_size=40)), min_size=1, max_size=5),
       st.lists(st.integers(min_value=1, max_value=30), max_size=40))
@pytest.mark.slow
def test_generated_events_round_trip_in_any_chunking(frames, sizes):
    data = b"".join(esl.encode_event(headers, body) for headers, body in frames)
    parser, messages = esl.FrameParser(), []
    for chunk in _chunked(data, sizes):
        messages += parser.feed(chunk)
    assert [(m.event().items, m.event().body) for m in messages] == [
        (headers, body) for headers, body in frames
    ]
