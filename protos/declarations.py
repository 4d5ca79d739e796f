"""Phases and metric declarations of ``rankboard.v1``: the one parser of declarations.

Part of the wire codec (:mod:`rankboard.protos.wire` re-exports every name here).

* **Phases** are ``"train"``/``"eval"`` in Python and ``PHASE_TRAIN``/``PHASE_EVAL``
  on the wire: :func:`phase_code`, :data:`PHASE_NAMES`; a phase's declaration travels in
  the Batch field :func:`declaration_field` names.
* **Metric declarations** are tzrec text, in the wrapped form
  (``metrics { auc {} } metrics { ... }``, ``train_metrics { ... }`` for train)
  or the bare form ``rankboard send --metrics`` takes (``auc {} grouped_auc {
  grouping_key: "user" }``, a scalar such as ``decay_step: 10`` belonging to
  the metric before it). :func:`parse_metrics` is the one parser of both: it
  checks the text field by field (errors point into the text as typed) and
  returns the config messages.

Example::

    >>> [m.WhichOneof("metric") for m in parse_metrics("eval", 'auc {} accuracy {}')]
    ['auc', 'accuracy']
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from google.protobuf import message, text_format

from rankboard.protos import ingest_pb2, metric_pb2
from rankboard.protos.text import parse_text

__all__ = [
    "PHASE_NAMES",
    "SCALAR_FIELDS",
    "DeclarationError",
    "MetricList",
    "declaration_field",
    "metric_blocks",
    "metric_fields",
    "parse_metrics",
    "phase_code",
    "validate_metrics_text",
]


class DeclarationError(ValueError):
    """A metric declaration that does not parse; the message points into the text."""


# ---------------------------------------------------------------- phases
PHASE_NAMES: dict[ingest_pb2.Phase, str] = {
    ingest_pb2.PHASE_TRAIN: "train",
    ingest_pb2.PHASE_EVAL: "eval",
}
"""Wire phase code -> ``"train"`` / ``"eval"``."""
_PHASE_CODES = {name: code for code, name in PHASE_NAMES.items()}


def phase_code(phase: str) -> ingest_pb2.Phase:
    """The wire code of ``"train"`` or ``"eval"``; ValueError for anything else.

    >>> phase_code("eval") == ingest_pb2.PHASE_EVAL
    True
    """
    code = _PHASE_CODES.get(phase)
    if code is None:
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    return code


def declaration_field(phase: str) -> str:
    """The Batch field that carries the declaration of ``phase``.

    >>> declaration_field("train"), declaration_field("eval")
    ('train_metrics', 'metrics')
    """
    phase_code(phase)
    return "train_metrics" if phase == "train" else "metrics"


def config_type(phase: str) -> type[message.Message]:
    """The config message of ``phase``'s metrics (``MetricConfig``, ``TrainMetricConfig``)."""
    return metric_pb2.TrainMetricConfig if phase == "train" else metric_pb2.MetricConfig


# ---------------------------------------------------------------- declarations
SCALAR_FIELDS: frozenset[str] = frozenset(
    f.name
    for cls in (metric_pb2.MetricConfig, metric_pb2.TrainMetricConfig)
    for f in cls.DESCRIPTOR.fields
    if f.containing_oneof is None
)
"""Non-metric fields of the configs (``decay_step``, ``window_size``, ...): in bare text
they belong to the metric before them."""

MetricList = Sequence[metric_pb2.MetricConfig] | Sequence[metric_pb2.TrainMetricConfig] | str


def metric_fields(text: str) -> list[tuple[str, str, int]]:
    """Top-level ``(name, text, start offset)`` fields of protobuf text.

    >>> [(n, t) for n, t, _ in metric_fields('auc {} grouped_auc { grouping_key: "u{" } x: 5')]
    [('auc', 'auc {}'), ('grouped_auc', 'grouped_auc { grouping_key: "u{" }'), ('x', 'x: 5')]
    """
    fields: list[tuple[str, str, int]] = []
    i, n = 0, len(text)

    def skip_space(j: int) -> int:
        while j < n and (text[j].isspace() or text[j] in ",;"):
            j += 1
        return j

    while (i := skip_space(i)) < n:
        start = i
        while i < n and (text[i].isalnum() or text[i] == "_"):
            i += 1
        name = text[start:i]
        if not name:
            raise DeclarationError(
                f"expected a metric name at character {start + 1}, got {text[start : start + 10]!r}"
            )
        i = skip_space(i)
        if i < n and text[i] == ":":
            i = skip_space(i + 1)
        if i < n and text[i] in "{<":
            depth, quote = 0, ""
            while i < n:
                c = text[i]
                if quote:
                    if c == "\\":
                        i += 1
                    elif c == quote:
                        quote = ""
                elif c in "\"'":
                    quote = c
                elif c in "{<":
                    depth += 1
                elif c in "}>":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif i < n and text[i] in "\"'":
            end = text.find(text[i], i + 1)
            i = n if end < 0 else end + 1
        else:
            while i < n and not text[i].isspace():
                i += 1
        fields.append((name, text[start:i].strip(), start))
    return fields


def metric_blocks(text: str, phase: str) -> str:
    """Normalise bare declaration text into repeated ``metrics { }`` / ``train_metrics { }``.

    Wrapped blocks stay as they are.

    >>> metric_blocks('auc {} grouped_auc { grouping_key: "user_id" }', "eval")
    'metrics { auc {} } metrics { grouped_auc { grouping_key: "user_id" } }'
    >>> metric_blocks('auc { thresholds: 100 } decay_step: 10', "train")
    'train_metrics { auc { thresholds: 100 } decay_step: 10 }'
    """
    wrapper = declaration_field(phase)
    fields = metric_fields(text)
    if fields and all(name in ("metrics", "train_metrics") for name, _, _ in fields):
        return text
    blocks: list[tuple[bool, list[str]]] = []  # (already wrapped, fields)
    for name, body, _ in fields:
        wrapped = name in ("metrics", "train_metrics")
        if not wrapped and name in SCALAR_FIELDS and blocks and not blocks[-1][0]:
            blocks[-1][1].append(body)
        else:
            blocks.append((wrapped, [body]))
    return " ".join(
        parts[0] if wrapped else f"{wrapper} {{ {' '.join(parts)} }}" for wrapped, parts in blocks
    )


def _where(text: str, offset: int) -> str:
    """``character N`` (single line) or ``line L, column C`` of ``offset`` in ``text``."""
    if "\n" not in text:
        return f"character {offset + 1}"
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {col}"


def _did_you_mean(name: str, candidates: list[str]) -> str:
    """Abbreviations first (gauc -> grouped_auc, mse -> mean_squared_error), then spelling."""
    lowered = name.lower()
    close = [
        m
        for m in candidates
        if lowered
        in (
            "".join(w[0] for w in m.split("_")),
            "".join(w[0] for w in m.split("_")[:-1]) + m.split("_")[-1],
            m.replace("_", ""),
        )
    ][:1] or difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def validate_metrics_text(
    text: str, phase: str, *, source: str = "declaration", _offset: int = 0, _full: str = ""
) -> None:
    """Check declaration text field by field; errors point into the text as typed.

    ``source`` names the text in messages (``rankboard send`` says ``--metrics``).

    >>> validate_metrics_text('auc {} grouped_auc { grouping_key: "u" }', "eval")
    >>> try:
    ...     validate_metrics_text('auc {} gauc { grouping_key: "u" }', "eval", source="--metrics")
    ... except DeclarationError as err:
    ...     print(str(err)[:90])
    --metrics: unknown metric 'gauc' at character 8 (did you mean grouped_auc?); valid metrics
    """
    full = _full or text
    msg_type = config_type(phase)
    metric_names = sorted(f.name for f in msg_type.DESCRIPTOR.oneofs_by_name["metric"].fields)
    scalars = sorted(f.name for f in msg_type.DESCRIPTOR.fields if f.containing_oneof is None)
    wrapper = declaration_field(phase)
    other = "metrics" if phase == "train" else "train_metrics"
    try:
        fields = metric_fields(text)
    except DeclarationError as err:
        raise DeclarationError(f"{source}: {err}") from None
    for name, body, rel_start in fields:
        start = _offset + rel_start
        if name == wrapper and "{" in body and body.endswith("}"):
            inner = body.index("{") + 1
            validate_metrics_text(
                body[inner:-1], phase, source=source, _offset=start + inner, _full=full
            )
            continue
        if name == other:
            raise DeclarationError(
                f"{source}: {'an' if phase == 'eval' else 'a'} {phase} declaration uses"
                f" `{wrapper} {{ ... }}` blocks, not `{other}` (at {_where(full, start)})"
            )
        if name not in metric_names and name not in scalars:
            raise DeclarationError(
                f"{source}: unknown metric {name!r} at {_where(full, start)}"
                f"{_did_you_mean(name, metric_names + scalars)};"
                f" valid metrics: {', '.join(metric_names)}"
                + (f" (and {', '.join(scalars)})" if name in SCALAR_FIELDS else "")
            )
        try:
            text_format.Parse(body, msg_type())
        except text_format.ParseError as err:
            line, col = err.GetLine() or 1, err.GetColumn() or 1
            lines = body.split("\n")
            rel = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
            detail = re.sub(r"^\d+:\d+ : ", "", str(err))
            raise DeclarationError(
                f"{source}: {detail} (in {name}, at {_where(full, start + rel)} of {source})"
            ) from None


def parse_metrics(
    phase: str, metrics: MetricList, *, source: str | None = None
) -> list[metric_pb2.MetricConfig] | list[metric_pb2.TrainMetricConfig]:
    """The metric configs of a declaration for ``phase``: the one parser of declarations.

    ``metrics`` is a list of :class:`MetricConfig` (eval) or
    :class:`TrainMetricConfig` (train) messages, or their tzrec text form:
    repeated ``metrics { ... }`` blocks for eval, ``train_metrics { ... }`` for
    train, or the bare form (``auc {} decay_step: 10``). Text is checked first
    (:func:`validate_metrics_text`), so a typo is named where it is.

    >>> [m.WhichOneof("metric") for m in parse_metrics(
    ...     "eval", 'metrics { auc {} } metrics { grouped_auc { grouping_key: "user" } }')]
    ['auc', 'grouped_auc']
    >>> parse_metrics("train", 'train_metrics { auc {} decay_step: 10 }')[0].decay_step
    10
    >>> parse_metrics("train", 'auc {} decay_step: 10')[0].decay_step
    10
    """
    field_name = declaration_field(phase)
    want = config_type(phase)
    if isinstance(metrics, str):
        label = source or f"{phase} metric declaration"
        validate_metrics_text(metrics, phase, source=label)
        holder = parse_text(metric_blocks(metrics, phase), ingest_pb2.Batch(), source=label)
        return list(getattr(holder, field_name))
    out: list[Any] = []
    for m in metrics:
        if not isinstance(m, want):
            raise TypeError(f"{phase} metrics must be {want.__name__} messages, got {type(m)!r}")
        out.append(m)
    return out
