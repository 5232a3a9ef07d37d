"""The audit trail on a file descriptor: whole lines, in order, never a token."""

from __future__ import annotations

import asyncio
import io
import json
import pathlib

from kube_sts.runtime.tokens import audit


def lines(path: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_without_an_event_loop_each_line_is_written_at_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.log"
    with path.open("w") as stream:
        stream.write('{"before":true}\n')  # buffered by the stream: must go out first
        trail = audit.AuditTrail(stream)
        trail.record({"decision": "allow", "n": 1})
        assert lines(path) == [{"before": True}, {"decision": "allow", "n": 1}]


def test_in_the_event_loop_a_turns_lines_go_out_together_at_its_end(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.log"

    async def turn(trail: audit.AuditTrail) -> list[int]:
        seen = []
        for n in range(3):
            trail.record({"n": n})
            seen.append(len(lines(path)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(len(lines(path)))
        return seen

    with path.open("w") as stream:
        assert asyncio.run(turn(audit.AuditTrail(stream))) == [0, 0, 0, 3]
    assert lines(path) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_flush_writes_what_is_pending(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.log"

    async def record_then_flush(trail: audit.AuditTrail) -> int:
        trail.record({"n": 0})
        trail.flush()  # what the app does at shutdown
        return len(lines(path))

    with path.open("w") as stream:
        assert asyncio.run(record_then_flush(audit.AuditTrail(stream))) == 1


def test_streams_without_a_descriptor_get_write() -> None:
    stream = io.StringIO()
    trail = audit.AuditTrail(stream)
    trail.record({"decision": "deny", "reason": "denied", "exp": None})
    trail.flush()
    assert stream.getvalue() == '{"decision":"deny","reason":"denied","exp":null}\n'
