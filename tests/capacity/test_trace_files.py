"""Traces: JSON Lines and CSV read back what was written; anything malformed names its line."""

from datetime import datetime, timedelta, timezone

import pytest

from capacity.traces import TraceError, TraceRequest, read_trace, write_trace

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
REQUESTS = [
    TraceRequest(at=T0 + timedelta(seconds=5), kind="interactive", model="tollgate-small", prompt_tokens=120,
                 output_tokens=40),
    TraceRequest(at=T0, kind="batch", model="tollgate-mini", prompt_tokens=600, output_tokens=300,
                 deadline=T0 + timedelta(hours=24)),
    TraceRequest(at=T0 + timedelta(seconds=9), kind="embedding", model="all-minilm-l6-v2", prompt_tokens=30,
                 output_tokens=0),
]


@pytest.mark.parametrize("name", ["trace.jsonl", "trace.csv"])
def test_a_written_trace_reads_back_in_arrival_order(tmp_path, name):
    path = tmp_path / name
    assert write_trace(REQUESTS, path) == 3
    assert read_trace(path) == sorted(REQUESTS, key=lambda r: r.at)


def test_a_batch_line_without_deadline_is_due_a_day_later_and_times_become_utc(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"at": "2026-03-02T10:00:00+01:00", "kind": "batch", "model": "m", "prompt_tokens": 1, '
                    '"output_tokens": 2}\n')
    (r,) = read_trace(path)
    assert r.at == T0 and r.at.tzinfo == timezone.utc
    assert r.deadline == T0 + timedelta(hours=24)


GOOD = '{"at": "2026-03-02T09:00:00Z", "kind": "interactive", "model": "m", "prompt_tokens": 1, "output_tokens": 2}'


@pytest.mark.parametrize("bad, words", [
    ('{"at": "2026-03-02T09:00:00Z", "kind": "interactive"', "not JSON"),
    ('["a list"]', "JSON object"),
    (GOOD.replace("interactive", "chat"), "'kind' must be one of"),
    (GOOD.replace('"2026-03-02T09:00:00Z"', '"2026-03-02T09:00:00"'), "no time zone"),
    (GOOD.replace('"2026-03-02T09:00:00Z"', '"yesterday"'), "not an ISO 8601 time"),
    (GOOD.replace('"output_tokens": 2', '"output_tokens": -2'), "'output_tokens' must be a whole number"),
    (GOOD.replace('"output_tokens": 2', '"output_tokens": 2.5'), "'output_tokens' must be a whole number"),
    (GOOD.replace(', "prompt_tokens": 1', ""), "missing 'prompt_tokens'"),
    (GOOD.replace("}", ', "priority": 1}'), "unknown field(s) 'priority'"),
    (GOOD.replace("}", ', "deadline": "2026-03-03T09:00:00Z"}'), "batch requests only"),
    (GOOD.replace("interactive", "batch").replace("}", ', "deadline": "2026-03-01T09:00:00Z"}'), "before 'at'"),
])
def test_a_bad_jsonl_line_is_refused_with_its_line_number(tmp_path, bad, words):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n")
    with pytest.raises(TraceError) as e:
        read_trace(path)
    assert e.value.line == 3
    assert "line 3: " in str(e.value) and words in str(e.value)


def test_a_bad_csv_row_is_refused_with_its_line_number(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("at,kind,model,prompt_tokens,output_tokens,deadline\n"
                    "2026-03-02T09:00:00Z,interactive,m,1,2,\n"
                    "2026-03-02T09:00:01Z,interactive,m,one,2,\n")
    with pytest.raises(TraceError, match=r"line 3: 'prompt_tokens' must be a whole number"):
        read_trace(path)
    path.write_text("at,kind,model,prompt_tokens,output_tokens,deadline\n2026-03-02T09:00:00Z,interactive,m,1,2,,x\n")
    with pytest.raises(TraceError, match="line 2: more values than the header"):
        read_trace(path)


def test_a_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(tmp_path / "empty.jsonl")
