"""A list of values bound as one parameter: ``column IN (…)`` without a placeholder per value.

SQLAlchemy's expanding ``IN`` (``bindparam(…, expanding=True)``) renders one placeholder per
value at every execution, and each new count of values is a new statement for the database to
prepare. The sender's claims and records bind a few hundred ids each: a claim spent 45 % of its
time rendering placeholders, and asyncpg prepared its statements again and again.

:func:`one_of` and :func:`none_of` bind the whole list as one parameter of a fixed statement:

- PostgreSQL: ``column = ANY(:values)`` (``<> ALL``), an array; the planner looks each value up
  in the column's index as it does for ``IN``.
- SQLite: ``column IN (SELECT value FROM json_each(:values))`` (``NOT IN``), JSON text; the
  subquery does not depend on the row, so SQLite reads it once.

An empty list matches nothing (``one_of``) or everything (``none_of``), as ``IN ()`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from sqlalchemy import Integer, String, Text, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.sqltypes import NULLTYPE
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

__all__ = ["ValueList", "none_of", "one_of", "values"]

Item = Literal["int", "text"]


class ValueList(TypeDecorator[list[Any]]):
    """A list of ints or of strings, bound as an array (PostgreSQL) or as JSON text (SQLite)."""

    impl = Text
    cache_ok = True

    def __init__(self, item: Item) -> None:
        super().__init__()
        self.item = item

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(Integer() if self.item == "int" else String()))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Iterable[Any] | None, dialect: Dialect) -> Any:
        items = list(value or ())
        if dialect.name == "postgresql":
            return items
        return json.dumps(items, ensure_ascii=False)


def values(name: str, item: Item) -> BindParameter[list[Any]]:
    """A parameter NAME that takes a list of ITEMs (bind it to any iterable of them)."""
    return bindparam(name, type_=ValueList(item))


class _OneOf(ColumnElement[bool]):
    """COLUMN's value is among VALUES' (NEGATED: it is not)."""

    __visit_name__ = "one_of"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration)
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
        ("negated", InternalTraversal.dp_boolean),
    ]
    # Untyped, so the condition is written as it is: typed Boolean, SQLite would get "(…) = 1",
    # which no index serves.
    type = NULLTYPE  # type: ignore[assignment]

    def __init__(
        self, column: ColumnElement[Any], values: BindParameter[list[Any]], negated: bool
    ) -> None:
        self.column = column
        self.values = values
        self.negated = negated


Operand = ColumnElement[Any] | QueryableAttribute[Any]  # a column, or a mapped attribute


def one_of(column: Operand, values: BindParameter[list[Any]]) -> ColumnElement[bool]:
    """COLUMN's value is one of the list bound to VALUES (see :func:`values`)."""
    return _OneOf(column.expression, values, negated=False)


def none_of(column: Operand, values: BindParameter[list[Any]]) -> ColumnElement[bool]:
    """COLUMN's value is none of the list bound to VALUES (see :func:`values`)."""
    return _OneOf(column.expression, values, negated=True)


@compiles(_OneOf)
def _json_each(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    bound = compiler.process(element.values, **kw)
    negation = "NOT " if element.negated else ""
    return f"({column} {negation}IN (SELECT value FROM json_each({bound})))"


@compiles(_OneOf, "postgresql")
def _array(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    bound = compiler.process(element.values, **kw)
    return f"({column} {'<> ALL' if element.negated else '= ANY'} ({bound}))"
