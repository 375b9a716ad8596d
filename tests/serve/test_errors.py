"""The error codes: one table in code (serve/errors.py CODES), the same table in the README, and
no answer can carry a code or status missing from it."""

import asyncio
import re
from pathlib import Path

import pytest

from mortgagellm.serve.door import reject
from mortgagellm.serve.errors import CODES, ApiError

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| ([0-9, ]+) \| `([a-z_]+)` \|", re.M)


def test_the_readme_table_lists_exactly_the_codes_and_their_statuses():
    rows = {code: frozenset(int(s) for s in statuses.split(","))
            for statuses, code in ROW.findall(README.read_text())}
    assert rows == CODES


def test_an_undocumented_code_or_status_is_refused_where_it_is_made():
    with pytest.raises(ValueError, match="'teapot' with status 418 is not in serve.errors.CODES"):
        ApiError(418, "I am a teapot", "teapot")
    with pytest.raises(ValueError, match="'overloaded' with status 500"):
        ApiError(500, "wrong status for this code", "overloaded")
    assert ApiError(503, "busy", "overloaded").headers == {"retry-after": "1"}

    sent = []

    async def send(message):
        sent.append(message)

    with pytest.raises(ValueError, match="'nope' with status 400"):
        asyncio.run(reject(send, 400, "no", "nope"))
    assert sent == []  # nothing half-sent
