"""The column types of the schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import TypeDecorator, create_engine, select
from sqlalchemy.dialects import sqlite

from helpdeskd.store.models import Base, Event, UTCDateTime

ZONES = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=ZONES)


@given(AWARE)
def test_sqlite_timestamps_are_the_text_sqlalchemy_writes(value: datetime) -> None:
    """The one-step SQLite processor writes what process_bind_param followed by the
    dialect's own DATETIME processor writes."""
    dialect = sqlite.dialect()
    column = UTCDateTime().dialect_impl(dialect)  # as a statement binds it
    ours = column.bind_processor(dialect)
    reference = TypeDecorator.bind_processor(column, dialect)
    assert ours is not None and reference is not None
    assert ours(value) == reference(value)
    assert ours(None) is None


def test_a_naive_timestamp_is_refused_on_sqlite() -> None:
    process = UTCDateTime().bind_processor(sqlite.dialect())
    with pytest.raises(ValueError, match="naive datetime"):
        process(datetime(2031, 3, 2, 9, 0))


def test_timestamps_come_back_from_sqlite_as_the_same_instant_in_utc() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    when = datetime(2031, 3, 2, 10, 30, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as connection:
        connection.execute(
            Event.__table__.insert(), {"type": "t", "actor": "a", "detail": {}, "created_at": when}
        )
        stored = connection.scalar(select(Event.created_at))
        found = connection.scalar(select(Event.id).where(Event.created_at == when))
    assert stored == when and stored.tzinfo == UTC and found is not None
