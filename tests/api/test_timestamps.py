import datetime as dt

from sftjob_api.timestamps import epoch_rfc3339, format_rfc3339, parse_rfc3339


def test_times_are_written_in_utc_with_seconds_and_z() -> None:
    moment = dt.datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_rfc3339(moment) == "2024-05-01T12:00:00Z"
    assert epoch_rfc3339(moment.timestamp()) == "2024-05-01T12:00:00Z"


def test_parsing_round_trips_and_reads_offsets() -> None:
    moment = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_rfc3339(format_rfc3339(moment)) == moment
    assert parse_rfc3339("2024-05-01T14:00:00+02:00") == moment
    assert parse_rfc3339("2024-05-01T12:00:00") == moment  # no offset: UTC


def test_absent_or_malformed_times_parse_as_none() -> None:
    assert parse_rfc3339(None) is None
    assert parse_rfc3339("") is None
    assert parse_rfc3339("yesterday") is None
