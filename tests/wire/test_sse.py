"""SSE framing: any split of a byte stream gives the same frames, byte for byte."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire import sse

payloads = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=30), max_size=4),
    min_size=1, max_size=8,
)
terminators = st.sampled_from([b"\n\n", b"\r\n\r\n"])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


@given(payloads, terminators, st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_yields_the_same_frames(items: list[dict[str, str]], end: bytes,
                                          cuts: list[int]) -> None:
    frames = [b"data: " + orjson.dumps(item) + end for item in items] + [b"data: [DONE]" + end]
    stream = b"".join(frames)
    framer = sse.SSEFramer()
    seen: list[bytes] = []
    for piece in split(stream, cuts):
        seen.extend(framer.feed(piece))
    assert seen == frames and framer.flush() == b""
    assert [sse.frame_json(f) for f in seen[:-1]] == items
    assert sse.frame_json(seen[-1]) is None


def test_event_names_multiline_data_and_comments() -> None:
    frame = b": keep-alive\nevent: response.completed\ndata: {\"a\":\ndata: 1}\n\n"
    assert sse.frame_fields(frame) == ("response.completed", b'{"a":\n1}')
    assert sse.frame_json(frame) == {"a": 1}
    assert sse.frame_fields(b": comment only\n\n") == (None, None)


def test_invalid_json_and_oversized_frames_are_errors() -> None:
    with pytest.raises(sse.SSEError):
        sse.frame_json(b"data: {not json\n\n")
    framer = sse.SSEFramer(max_frame=100)
    with pytest.raises(sse.SSEError):
        framer.feed(b"data: " + b"x" * 200)


def test_unterminated_tail_is_returned_by_flush() -> None:
    framer = sse.SSEFramer()
    assert framer.feed(b"data: 1\n\ndata: 2") == [b"data: 1\n\n"]
    assert framer.flush() == b"data: 2"


@given(st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1), max_size=3),
       st.one_of(st.none(), st.sampled_from(["error", "response.output_text.delta"])))
def test_encode_round_trips(payload: dict[str, int], event: str | None) -> None:
    frame = sse.encode(payload, event)
    assert sse.frame_fields(frame)[0] == event
    assert sse.frame_json(frame) == payload
