"""What a send declares: ``--metrics`` text checked by the wire codec's parser, or the
metrics a ``--kind`` stands for.

The one parser of declarations is the wire codec's (:mod:`rankboard.protos.wire`); it is
imported when first used, so that ``rankboard --help`` and flag parsing load no numpy.
"""

from __future__ import annotations

from typing import Any

from rankboard.service.send.errors import SendInputError

__all__ = ["KINDS", "declared_configs", "kind_declaration", "validate_metrics_text"]

KINDS = ("binary", "regression", "multiclass")


def validate_metrics_text(text: str, phase: str) -> None:
    """Check ``--metrics`` text field by field; errors point into the text as typed.

    The parser is :func:`rankboard.protos.wire.parse_metrics`.

    >>> validate_metrics_text('auc {} grouped_auc { grouping_key: "u" }', "eval")
    >>> try:
    ...     validate_metrics_text('auc {} gauc { grouping_key: "u" }', "eval")
    ... except SendInputError as err:
    ...     print(str(err)[:90])
    --metrics: unknown metric 'gauc' at character 8 (did you mean grouped_auc?); valid metrics
    """
    declared_configs(text, phase)


def declared_configs(text: str, phase: str) -> list[Any]:
    """The metric configs of ``--metrics`` text; errors point into the text as typed."""
    from rankboard.protos import wire

    try:
        return wire.parse_metrics(phase, text, source="--metrics")
    except ValueError as err:  # DeclarationError, ConfigError
        raise SendInputError(str(err)) from None


def kind_declaration(kind: str, phase: str, group_cols: list[str]) -> str:
    """The metrics ``--kind`` declares when ``--metrics`` is not given (tzrec text).

    eval: binary -> exact AUC, normalized entropy, and grouped AUC per
    ``--group-col``; regression -> exact XAUC, MSE, MAE; multiclass -> exact
    multi-class AUC and accuracy. train: decayed AUC, MSE or accuracy.

    >>> kind_declaration("binary", "eval", ["user_id"])
    'auc { thresholds: 0 } normalized_entropy {} grouped_auc { grouping_key: "user_id" }'
    >>> kind_declaration("regression", "eval", [])
    'xauc {} mean_squared_error {} mean_absolute_error {}'
    """
    if kind not in KINDS:
        raise SendInputError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if phase == "train":
        return {
            "binary": "auc {}",
            "regression": "mean_squared_error {}",
            "multiclass": "accuracy {}",
        }[kind]
    if kind == "binary":
        parts = ["auc { thresholds: 0 }", "normalized_entropy {}"]
        parts += [f'grouped_auc {{ grouping_key: "{g}" }}' for g in group_cols]
        return " ".join(parts)
    if kind == "regression":
        return "xauc {} mean_squared_error {} mean_absolute_error {}"
    return "multiclass_auc { thresholds: 0 } accuracy {}"
