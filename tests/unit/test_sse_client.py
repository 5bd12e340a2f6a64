"""``hpcdock.client.parse_sse``: Server-Sent Events lines to events, without a service."""

from __future__ import annotations

from hpcdock.client import Event, parse_sse


def parse(text: str) -> list[Event]:
    return list(parse_sse(iter(text.split("\n"))))


def test_events_with_ids_kinds_and_json_data() -> None:
    text = (
        'id: 1\nevent: job\ndata: {"job": {"id": 7}}\n\n'
        'id: 2\nevent: frame\ndata: {"frame": {"frame": 3}}\n\n'
    )
    assert parse(text) == [Event(1, "job", {"job": {"id": 7}}), Event(2, "frame", {"frame": {"frame": 3}})]


def test_comments_are_skipped_anywhere() -> None:
    text = (
        ": connected\n\n"
        ": keepalive\n\n"
        'id: 5\n: a comment inside an event\nevent: task\ndata: {"task": {}}\n\n'
        ":no space after the colon\n\n"
    )
    assert parse(text) == [Event(5, "task", {"task": {}})]


def test_multi_line_data_is_joined_with_newlines() -> None:
    text = 'id: 9\nevent: job\ndata: {"job":\ndata:  {"id": 1,\ndata: "name": "a"}}\n\n'
    assert parse(text) == [Event(9, "job", {"job": {"id": 1, "name": "a"}})]


def test_one_leading_space_is_stripped_and_no_space_is_fine() -> None:
    assert parse('id:3\nevent:frame\ndata:{"frame": {}}\n\n') == [Event(3, "frame", {"frame": {}})]


def test_event_without_id_is_not_delivered_and_does_not_leak_into_the_next() -> None:
    # The service puts an id on every event; one without cannot be resumed from, so it is
    # dropped, and the fields of the next event start afresh.
    text = 'event: job\ndata: {"job": {"id": 1}}\n\ndata: {"x": 1}\n\nid: 4\ndata: {"y": 2}\n\n'
    assert parse(text) == [Event(4, "message", {"y": 2})]


def test_id_without_data_dispatches_nothing() -> None:
    assert parse("id: 8\nevent: job\n\nid: 9\nevent: task\ndata: {}\n\n") == [Event(9, "task", {})]


def test_unfinished_last_event_is_not_delivered() -> None:
    # A connection dropped in the middle of an event: the client resumes from the last whole one.
    assert parse('id: 1\ndata: {}\n\nid: 2\nevent: job\ndata: {"job"') == [Event(1, "message", {})]


def test_none_lines_and_unknown_fields_are_ignored() -> None:
    lines = iter(["retry: 1000", None, "id: 2", "foo: bar", "event: job", 'data: {"a": 1}', ""])
    assert list(parse_sse(lines)) == [Event(2, "job", {"a": 1})]
