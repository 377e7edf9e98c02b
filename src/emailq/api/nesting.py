"""A cap on how deeply a request body's JSON may nest.

Why: json.loads recurses once per level, so a body nested 1,000 levels deep raised
RecursionError (a 500), and a deep value costs every later step that walks it (the
model, the templates). No field of an email or a guest list needs more than a few.
"""

from typing import Any

from emailq.errors import FieldError

MAX_DEPTH = 32


def too_deep_error(where: str = "") -> FieldError:
    return FieldError(where, f"the body nests JSON deeper than {MAX_DEPTH} levels")


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests objects and arrays more than ``limit`` levels,
    ``value`` itself being the first. One step per container, level by level."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def body_nested_deeper(body: bytes, value: Any) -> bool:
    """:func:`nested_deeper` than :data:`MAX_DEPTH` for a whole body; a body with fewer
    "[" and "{" than that (most single emails) is not walked at all."""
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return False
    return nested_deeper(value, MAX_DEPTH)
