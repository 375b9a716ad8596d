"""Section, the base of every recipe section; the other modules here import it, it imports none."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def deep_update(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` with `overrides` merged in: nested dicts key by key, anything else replaced."""
    out = dict(data)
    for key, value in overrides.items():
        out[key] = (deep_update(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out
