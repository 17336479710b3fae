"""Parsing of the admin routes' bodies: a board's settings as JSON, to the domain's names."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidBody
from app.leaderboard import InvalidBoard

# JSON field -> (domain name, type)
BOARD_FIELDS: dict[str, tuple[str, type]] = {
    "title": ("title", str),
    "topN": ("top_n", int),
    "order": ("order", str),
    "operator": ("operator", str),
    "scoreMin": ("score_min", int),
    "scoreMax": ("score_max", int),
    "reset": ("reset", str),
    "timezone": ("timezone", str),
}


def parse_board_settings(document: Any) -> dict[str, Any]:
    """The settings a PUT /admin/boards/<id> body gives, by their domain names (any may be left out)."""
    if not isinstance(document, dict):
        raise InvalidBody('The body must be a JSON object like {"title": "Weekly", "topN": 10}.')
    unknown = sorted(set(document) - set(BOARD_FIELDS))
    if unknown:
        raise InvalidBody(f"Unknown field(s): {', '.join(unknown)}. Known: {', '.join(BOARD_FIELDS)}.")
    changes: dict[str, Any] = {}
    for field, value in document.items():
        name, kind = BOARD_FIELDS[field]
        if type(value) is not kind:  # exactly: true is not a topN
            raise InvalidBoard(f"{field} must be a JSON {'integer' if kind is int else 'string'}.")
        changes[name] = value
    return changes
