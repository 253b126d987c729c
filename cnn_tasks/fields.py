"""Building blocks of the settings models (config.py, experiments.py) and the errors users see.

The frozen base model; numbers read from JSON or form strings but never from booleans; text where
blank means unset; checks of single values, each with the message a user sees; regular
expressions for `Field(pattern=...)` (so the trigger form and the JSON schema see them) with the
message shown when a value does not match; and `config_error`, which turns pydantic's first error
into a `ConfigError` that names the field the way users see it
(`experiments[0].conv[2].filters: 4096 is outside 1..2048`).
"""

from collections.abc import Callable
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from cnn_tasks.errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """An invalid configuration value; the message starts with the field's name."""

    def __init__(self, field_name: str, message: str):
        self.field, self.message = field_name, message
        super().__init__(f"{field_name}: {message}")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read True as 1
        raise ValueError(f"{value!r} is not a number")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def rule(ok: Callable[[Any], Any], message: str | Callable[[Any], str]) -> AfterValidator:
    """A check of a set value; the message is a function of the value or a format of {value}."""

    def check(value: Any) -> Any:
        if value is not None and not ok(value):
            raise ValueError(message(value) if callable(message) else message.format(value=value))
        return value

    return AfterValidator(check)


# Numbers read from JSON or form strings ("32"), never from booleans; text where blank means unset.
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
OptionalInt = Annotated[int | None, BeforeValidator(_not_bool)]
OptionalFloat = Annotated[float | None, BeforeValidator(_not_bool)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_is_none)]

# Patterns (pydantic matches them with search, hence the anchors) and the message a user sees when a
# value does not match. A pattern for a field where blank means unset accepts blank text too: the
# model reads it as None, and the trigger form's validation must let it through.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,39}$"
OPTIONAL_SLUG_PATTERN = r"^\s*$|" + SLUG_PATTERN
OPTIONAL_CHECKSUM_PATTERN = r"^\s*$|^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$"
_SLUG_MESSAGE = "{input!r}: use 1-40 lowercase letters, digits, '_' or '-'"
_PATTERN_MESSAGES = {
    SLUG_PATTERN: _SLUG_MESSAGE,
    OPTIONAL_SLUG_PATTERN: _SLUG_MESSAGE,
    OPTIONAL_CHECKSUM_PATTERN: "{input!r} must look like 'md5:<32 hex>' or 'sha256:<64 hex>'",
}


class SettingsModel(BaseModel):
    """The base of every settings model: frozen (hashable), and an unknown field is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------------------ errors
# Lists of the wrong length, by field; the bounds themselves are on the fields.
_LENGTH_MESSAGES = {
    "split": "needs three ratios: train, validation, test",
    "experiments": "at least one experiment is needed",
    "conv": "has {actual_length} conv layers; at least {min_length} are required",
}
_TYPE_MESSAGES = {
    "int_parsing": "{input!r} is not a valid int",
    "int_type": "{input!r} is not a valid int",
    "int_from_float": "{input!r} must be a whole number",
    "float_parsing": "{input!r} is not a valid float",
    "float_type": "{input!r} is not a valid float",
    "bool_type": "{input!r} must be true or false",
    "string_type": "{input!r} must be text",
    "literal_error": "{input!r} is not one of {expected}",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "missing": "is required",
}


def config_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """The first error of a pydantic ValidationError of `root` as a ConfigError naming the field path."""
    error = exc.errors()[0]
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    cause = ctx.get("error")
    if isinstance(cause, ConfigError):  # raised by a model validator, relative to the model
        return ConfigError(f"{path}.{cause.field}" if path else cause.field, cause.message)
    if kind == "value_error":
        return ConfigError(path, str(cause))
    if kind == "extra_forbidden":
        known = ", ".join(_model_at(root, loc[:-1]).model_fields)
        return ConfigError(path, f"unknown setting; known: {known}")
    if kind.startswith(("greater_than", "less_than")):
        return ConfigError(path, f"{error['input']} {_range_text(_bounds(root, loc) or ctx)}")
    if kind in ("too_short", "too_long"):
        name = next(part for part in reversed(loc) if isinstance(part, str))
        return ConfigError(path, _LENGTH_MESSAGES[name].format(**ctx) if name in _LENGTH_MESSAGES else error["msg"])
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_MESSAGES:
        return ConfigError(path, _PATTERN_MESSAGES[ctx["pattern"]].format(input=error["input"]))
    template = _TYPE_MESSAGES.get(kind)
    return ConfigError(path, template.format(input=error["input"], **ctx) if template else error["msg"])


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The settings model that holds the fields at `loc` (e.g. ExperimentSpec for experiments[0])."""
    model = root
    for part in loc:
        if isinstance(part, str):
            annotation = model.model_fields[part].annotation
            model = next(a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel))
    return model


def _bounds(root: type[BaseModel], loc: tuple) -> dict[str, Any]:
    """The field's numeric bounds (ge, gt, le, lt) for a field path, or {} when it has none."""
    if not loc or not isinstance(loc[-1], str):
        return {}
    field = _model_at(root, loc[:-1]).model_fields[loc[-1]]
    return {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}


def _range_text(bounds: dict[str, Any]) -> str:
    """'is outside 16..512', 'is outside [0, 1)' or 'must be >= 2'."""
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if low is not None and high is not None:
        if "ge" in bounds and "le" in bounds:
            return f"is outside {low}..{high}"
        return f"is outside {'[' if 'ge' in bounds else '('}{low}, {high}{']' if 'le' in bounds else ')'}"
    key, op = next((key, op) for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if key in bounds)
    return f"must be {op} {bounds[key]}"
