"""Check a cluster spec against cluster_specs/schema.json.

The schema file is the single source of truth for keys and types. jsonschema
is not a dependency, so this interprets the subset the schema uses: type,
enum, minimum, maximum, pattern, minItems, items, properties, required,
additionalProperties and local $ref. The first violation is returned as
(field, expected, hint).
"""
import difflib
import json
import os
import re

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "cluster_specs", "schema.json")

_TYPE_NAMES = {"integer": "an integer", "number": "a number",
               "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "an object"}


def load_schema():
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def _is_type(value, name):
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "array": list,
                              "object": dict}[name])


def field_name(path):
    out = ""
    for part in path:
        out += "[%d]" % part if isinstance(part, int) else (
            "." + part if out else part)
    return out or "(top level)"


def show(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Violation(Exception):
    def __init__(self, path, expected, hint=None):
        super().__init__(expected)
        self.field, self.expected, self.hint = field_name(path), expected, hint


def check(value, schema=None, root=None, path=()):
    """Raise Violation for the first place `value` breaks `schema`."""
    root = root or schema or load_schema()
    schema = schema or root
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = dict(root["$defs"][name],
                      **{k: v for k, v in schema.items() if k != "$ref"})
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            raise Violation(path, "%s, got %s" % (
                " or ".join(_TYPE_NAMES[t] for t in types), show(value)))
    if "enum" in schema and value not in schema["enum"]:
        raise Violation(path, "one of %s, got %s" % (
            ", ".join(json.dumps(v) for v in schema["enum"]), show(value)),
            _closest(value, schema["enum"]))
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise Violation(path, "a number >= %s, got %s"
                            % (schema["minimum"], show(value)))
        if "maximum" in schema and value > schema["maximum"]:
            raise Violation(path, "a number <= %s, got %s"
                            % (schema["maximum"], show(value)))
    if isinstance(value, str) and "pattern" in schema:
        if not re.search(schema["pattern"], value):
            raise Violation(path, "a string matching %s, got %s"
                            % (schema["pattern"], show(value)))
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise Violation(path, "a list of at least %d item(s), got %s"
                            % (schema["minItems"], show(value)))
        if "items" in schema:
            for i, item in enumerate(value):
                check(item, schema["items"], root, path + (i,))
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise Violation(path + (key,), "this required field (%s)"
                                % _describe(properties.get(key, {}), root))
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                check(item, properties[key], root, path + (key,))
            elif extra is False:
                known = ", ".join(sorted(properties))
                raise Violation(path + (key,), "no such key; known keys here "
                                "are: %s" % known, _closest(key, properties))
            elif isinstance(extra, dict):
                check(item, extra, root, path + (key,))


def _describe(schema, root):
    if "$ref" in schema:
        schema = dict(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], **schema)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else (types or ["object"])
    return " or ".join(_TYPE_NAMES[t] for t in types)


def _closest(word, choices):
    if not isinstance(word, str):
        return None
    match = difflib.get_close_matches(word, [str(c) for c in choices], n=1,
                                      cutoff=0.5)
    return 'did you mean "%s"?' % match[0] if match else None
