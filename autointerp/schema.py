"""Parse a judge's answer as JSON and check it against a small JSON-Schema subset.

A judge answers in text. `parse_json_answer` accepts a bare JSON value, the same wrapped in a
Markdown code fence (```json ... ```), or a single JSON object with a little prose around it;
anything else raises `InvalidAnswer` with a reason short enough to send back to the judge when
re-asking. `check_schema` validates the parsed value against the subset of JSON Schema that the
prompts here need (and that callers of `Judge.complete` may use):

    type (object, array, string, integer, number, boolean, null, or a list of them), properties,
    required, additionalProperties (bool), items, minItems, maxItems, enum, const, minLength,
    maxLength, pattern, minimum, maximum, anyOf.

Unsupported keywords are an error at check time (never silently ignored), so a schema that asks
for more than this module can check fails loudly instead of letting invalid answers through.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["InvalidAnswer", "parse_json_answer", "opens_with_json_answer", "check_schema", "SUPPORTED_KEYWORDS"]

SUPPORTED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
        "enum", "const", "minLength", "maxLength", "pattern", "minimum", "maximum", "anyOf",
        # annotations, ignored by validation
        "title", "description", "$schema", "examples", "default",
    }
)


class InvalidAnswer(ValueError):
    """The judge's answer could not be parsed or does not match the expected schema.

    `reason` is a short, judge-facing sentence (it is sent back when re-asking)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_FENCE_RE = re.compile(r"^```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)\r?\n?```$", re.DOTALL)
_FENCE_OPEN_RE = re.compile(r"^```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n")
_JSON_FENCES = ("", "json", "jsonc", "json5")  # a ```-fence's language that holds JSON


def parse_json_answer(text: str | None, *, amid_prose: bool = True) -> Any:
    """The JSON value in a judge's answer (bare, ```-fenced, or, with `amid_prose`, one object amid prose)."""
    if text is None or not text.strip():
        raise InvalidAnswer("the answer was empty; reply with the JSON object only")
    s = text.strip()
    m = _FENCE_RE.match(s)
    if m:
        lang = m.group(1).lower()
        if lang not in _JSON_FENCES:
            raise InvalidAnswer(f"the answer was a ```{lang} code block; reply with JSON only")
        s = m.group(2).strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        if not amid_prose:
            raise InvalidAnswer("the answer was not valid JSON; reply with the JSON object only, no prose") from None
    # One JSON object surrounded by prose ("Sure! {...}"): accept only if exactly one object parses.
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = s.find("{")
    while i != -1 and len(found) < 2:
        try:
            value, end = decoder.raw_decode(s, i)
        except json.JSONDecodeError:
            i = s.find("{", i + 1)
            continue
        found.append(value)
        i = s.find("{", end)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidAnswer("the answer held more than one JSON object; reply with exactly one")
    raise InvalidAnswer("the answer was not valid JSON; reply with the JSON object only, no prose")


def opens_with_json_answer(text: str) -> bool:
    """Whether `text` is a bare or fenced JSON answer, or begins with a whole JSON object or array
    (bare or after a ```json fence's first line) that the rest goes on after: a note after the
    answer, or a closing fence, cut off at the output-token limit."""
    try:
        parse_json_answer(text, amid_prose=False)
        return True
    except InvalidAnswer:
        pass
    s = text.lstrip()
    m = _FENCE_OPEN_RE.match(s)
    if m:
        if m.group(1).lower() not in _JSON_FENCES:
            return False
        s = s[m.end():].lstrip()
    if not s.startswith(("{", "[")):  # a bare number would read "1. First, ..." as an answer
        return False
    try:
        json.JSONDecoder().raw_decode(s)
    except json.JSONDecodeError:
        return False
    return True


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name not in _TYPES:
        raise ValueError(f"schema type {name!r} is not supported; use one of {sorted(_TYPES)}")
    if name in ("number", "integer") and isinstance(value, bool):
        return False  # JSON true is not a number
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true != 1
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def check_schema(value: Any, schema: dict[str, Any], path: str = "answer") -> None:
    """Raise `InvalidAnswer` naming the first place where `value` breaks `schema`."""
    unknown = set(schema) - SUPPORTED_KEYWORDS
    if unknown:
        raise ValueError(
            f"schema keyword(s) {sorted(unknown)} are not supported by autointerp.schema; "
            f"supported: {sorted(SUPPORTED_KEYWORDS)} (or pass a `validate` function)"
        )
    if "anyOf" in schema:
        reasons = []
        for sub in schema["anyOf"]:
            try:
                check_schema(value, sub, path)
                break
            except InvalidAnswer as e:
                reasons.append(e.reason)
        else:
            raise InvalidAnswer(f"{path} matched none of the allowed forms ({'; '.join(reasons)})")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            raise InvalidAnswer(f"{path} must be of type {' or '.join(names)}, got {type(value).__name__}")
    if "const" in schema and not _same(value, schema["const"]):
        raise InvalidAnswer(f"{path} must be {json.dumps(schema['const'])}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        raise InvalidAnswer(f"{path} must be one of {json.dumps(schema['enum'])}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise InvalidAnswer(f"{path} must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidAnswer(f"{path} must have at most {schema['maxLength']} characters, got {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise InvalidAnswer(f"{path} must match the pattern {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidAnswer(f"{path} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidAnswer(f"{path} must be <= {schema['maximum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise InvalidAnswer(f"{path} must have at least {schema['minItems']} items, got {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidAnswer(f"{path} must have at most {schema['maxItems']} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                check_schema(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise InvalidAnswer(f"{path} is missing the key {name!r}")
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise InvalidAnswer(f"{path} has unexpected key(s) {extra}; allowed: {sorted(props)}")
        for name, sub in props.items():
            if name in value:
                check_schema(value[name], sub, f"{path}.{name}")
