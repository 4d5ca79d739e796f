"""Input validation shared by the functional metrics and the metric classes.

Every check runs before any state changes and raises :class:`ValueError` with a message
a caller can act on. The value checks (finite, label sets, ranges) come from min / max
reductions (NaN and infinities show up in them): numpy on the CPU, where it is cheapest
for small batches, and a single host sync per batch on CUDA.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

LabelKind = Literal["binary", "multiclass", "real"]

__all__ = ["Batch", "LabelKind", "validate_batch", "validate_grouped"]


class Batch(NamedTuple):
    """A validated batch in the compact dtypes the metrics keep.

    ``preds`` float32 ``(n,)`` or ``(n, C)``; ``target`` float32 ``(n,)`` for binary and
    real labels, int64 ``(n,)`` class ids or float32 ``(n, C)`` relevance for multiclass;
    ``weights`` float32 ``(n,)`` or None; ``keys`` int64 ``(n,)`` or None.
    """

    preds: Tensor
    target: Tensor
    weights: Tensor | None
    keys: Tensor | None

    @property
    def size(self) -> int:
        return int(self.preds.shape[0])


def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array-like of numbers: {err}") from err


def _nograd(x: Tensor) -> Tensor:
    return x.detach() if x.requires_grad else x


def validate_batch(
    preds: object,
    target: object,
    *,
    weights: object | None = None,
    grouping_key: object | None = None,
    label_kind: LabelKind,
    supports_weights: bool = True,
    needs_grouping_key: bool = False,
    multiclass_preds: bool = False,
    allow_multihot_target: bool = False,
    prob_preds: bool = False,
    metric_name: str = "metric",
) -> Batch:
    """Check one batch and return it converted to the compact dtypes.

    Rules (each violation is a ``ValueError``):

    * ``preds`` is 1-D ``(n,)``, or 2-D ``(n, C)`` with ``C >= 1`` when
      ``multiclass_preds``; finite; within ``[0, 1]`` when ``prob_preds``.
    * ``target`` has ``n`` rows. ``binary``: values in {0, 1} (any numeric or bool dtype).
      ``real``: finite. ``multiclass``: integral class ids in ``[0, C)``, or, when
      ``allow_multihot_target``, an ``(n, C)`` tensor of finite non-negative relevance.
    * ``weights`` only where supported (``supports_weights``: the functional API takes
      them wherever it has a ``weights`` argument; a metric class passes its own flag):
      ``(n,)``, finite, non-negative.
    * ``grouping_key`` required where needed (``(n,)`` integer ids) and refused elsewhere.
    * ``n == 0`` is allowed: the batch is then a no-op for every metric.

    >>> b = validate_batch([0.2, 0.9], [0, 1], label_kind="binary")
    >>> b.preds.dtype, b.target.tolist()
    (torch.float32, [0.0, 1.0])
    >>> validate_batch([0.2, float("nan")], [0, 1], label_kind="binary")
    Traceback (most recent call last):
    ...
    ValueError: metric: preds contain NaN or infinite values
    """
    # metrics retain inputs: never an autograd graph with them (detach only when needed,
    # so that the same tensor object reaches every metric and the value checks run once)
    p = _nograd(_as_tensor(preds, "preds"))
    t = _nograd(_as_tensor(target, "target"))
    who = metric_name
    if p.is_complex() or p.dtype == torch.bool:
        raise ValueError(f"{who}: preds must be real numbers, got dtype {p.dtype}")
    if multiclass_preds:
        if p.dim() != 2 or p.shape[1] < 1:
            raise ValueError(f"{who}: preds must have shape (n, num_classes), got {tuple(p.shape)}")
    elif p.dim() != 1:
        raise ValueError(f"{who}: preds must have shape (n,), got {tuple(p.shape)}")
    n = int(p.shape[0])
    if t.shape[:1] != (n,) and not (t.dim() >= 1 and t.shape[0] == n):
        raise ValueError(
            f"{who}: target has {t.shape[0] if t.dim() else 'no'} rows but preds have {n}"
        )
    if t.is_complex():
        raise ValueError(f"{who}: target must be real numbers, got dtype {t.dtype}")

    multihot = False
    if label_kind == "multiclass" and multiclass_preds:
        if t.dim() == 2 and allow_multihot_target:
            if t.shape != p.shape:
                raise ValueError(
                    f"{who}: multi-hot target must have the shape of preds {tuple(p.shape)}, "
                    f"got {tuple(t.shape)}"
                )
            multihot = True
        elif t.dim() != 1:
            raise ValueError(f"{who}: target must be class ids of shape (n,), got {tuple(t.shape)}")
    elif t.dim() != 1:
        raise ValueError(f"{who}: target must have shape (n,), got {tuple(t.shape)}")

    w: Tensor | None = None
    if weights is not None:
        if not supports_weights:
            raise ValueError(f"{who} does not support per-sample weights")
        w = _nograd(_as_tensor(weights, "weights"))
        if w.dim() != 1 or w.shape[0] != n:
            raise ValueError(f"{who}: weights must have shape ({n},), got {tuple(w.shape)}")
        if w.is_complex() or w.dtype == torch.bool:
            raise ValueError(f"{who}: weights must be real numbers, got dtype {w.dtype}")

    k: Tensor | None = None
    if needs_grouping_key:
        if grouping_key is None:
            raise ValueError(f"{who} needs a grouping key for every sample, none was given")
        k = _as_tensor(grouping_key, "grouping_key")
        if k.dim() != 1 or k.shape[0] != n:
            raise ValueError(f"{who}: grouping_key must have shape ({n},), got {tuple(k.shape)}")
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise ValueError(f"{who}: grouping_key must be integer ids, got dtype {k.dtype}")
    elif grouping_key is not None:
        raise ValueError(f"{who} does not take a grouping key")

    device = p.device
    if t.device != device:
        t = t.to(device)
    if w is not None and w.device != device:
        w = w.to(device)
    if k is not None and k.device != device:
        k = k.to(device)

    if n:
        _check_values(
            p,
            t,
            w,
            label_kind=label_kind,
            multihot=multihot,
            prob_preds=prob_preds,
            num_classes=int(p.shape[1]) if multiclass_preds else None,
            who=who,
        )

    want = torch.int64 if label_kind == "multiclass" and not multihot else torch.float32
    return Batch(
        _as(p, torch.float32),
        _as(t, want),
        None if w is None else _as(w, torch.float32),
        None if k is None else _as(k, torch.int64),
    )


def validate_grouped(
    preds: object, target: object, grouping_key: object, weights: object | None, **kinds: Any
) -> Batch:
    """:func:`validate_batch` for a per-group metric: ``grouping_key`` is required.
    ``kinds``: ``label_kind`` and ``metric_name``.

    >>> validate_grouped([0.2, 0.9], [0, 1], [7, 7], None, label_kind="binary").keys.tolist()
    [7, 7]
    """
    return validate_batch(
        preds, target, grouping_key=grouping_key, needs_grouping_key=True, weights=weights, **kinds
    )


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def to_numpy(x: Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor."""
    return x.detach().numpy() if x.requires_grad else x.numpy()


_facts = threading.local()
_MAX_FACTS = 32


def _memo(kind: str, x: Tensor, fn: Callable[[Tensor], Any]) -> Any:
    """``fn(x)``, remembered while ``x`` is the same unmodified tensor.

    Several metrics validate the same batch (and the service checks a batch before it
    applies it): the value reductions run once per tensor, not once per metric. The
    entry holds a weak reference to ``x`` (a hit must be ``x`` itself, so a reused id
    never matches, and the cache pins no batch's memory) and its version counter, which
    any in-place change bumps.

    >>> x = torch.tensor([0.5, 2.0])
    >>> _memo("demo", x, lambda t: float(t.max())), _memo("demo", x, lambda t: -1.0)
    (2.0, 2.0)
    >>> x[1] = 3.0
    >>> _memo("demo", x, lambda t: float(t.max()))
    3.0
    """
    if x.is_inference():
        return fn(x)
    cache: dict | None = getattr(_facts, "cache", None)
    if cache is None:
        cache = _facts.cache = {}
    key = (kind, id(x))
    hit = cache.get(key)
    if hit is not None and hit[0]() is x and hit[1] == x._version:
        return hit[2]
    value = fn(x)
    _remember(cache, kind, x, value)
    return value


def _remember(cache: dict, kind: str, x: Tensor, value: Any) -> None:
    if len(cache) >= _MAX_FACTS:
        cache.clear()
    cache[(kind, id(x))] = (weakref.ref(x), x._version, value)


def remember_range(x: Tensor, lo: float, hi: float) -> None:
    """Record ``(min, max)`` of CPU tensor ``x`` where its maker already took them (the
    service's decoder checks every column's range), so validation does not again.

    >>> x = torch.tensor([0.25, 0.5])
    >>> remember_range(x, 0.25, 0.5); _memo("range", x, lambda t: (-1.0, -1.0))
    (0.25, 0.5)
    """
    if x.is_inference():
        return
    cache: dict | None = getattr(_facts, "cache", None)
    if cache is None:
        cache = _facts.cache = {}
    _remember(cache, "range", x, (lo, hi))


def _range_cpu(x: Tensor) -> tuple[float, float]:
    a = to_numpy(x)
    return float(a.min()), float(a.max())


def _ranges(xs: list[Tensor]) -> list[tuple[float, float]]:
    """``(min, max)`` of each tensor (NaN propagates); numpy on the CPU, one sync elsewhere."""
    if all(x.device.type == "cpu" for x in xs):
        return [_memo("range", x, _range_cpu) for x in xs]
    mm = torch.stack(
        [torch.stack(torch.aminmax(x.detach())).to(torch.float64) for x in xs]
    ).tolist()
    return [(lo, hi) for lo, hi in mm]


def _all_in_01(t: Tensor) -> bool:
    """Whether a float tensor already known to lie in [0, 1] holds only 0 and 1."""
    return _memo("binary", t, _only_0_1)


def _only_0_1(t: Tensor) -> bool:
    if t.device.type == "cpu":
        a = to_numpy(t)
        return not np.count_nonzero((a != 0) & (a != 1))
    return bool(((t == 0) | (t == 1)).all())


def _check_values(
    p: Tensor,
    t: Tensor,
    w: Tensor | None,
    *,
    label_kind: str,
    multihot: bool,
    prob_preds: bool,
    num_classes: int | None,
    who: str,
) -> None:
    """Value checks from min / max reductions: NaN and infinities show up in them."""
    xs = [p, t] if w is None else [p, t, w]
    xs = [x.to(torch.uint8) if x.dtype == torch.bool else x for x in xs]
    ranges = _ranges(xs)
    (plo, phi), (tlo, thi) = ranges[0], ranges[1]
    if not (math.isfinite(plo) and math.isfinite(phi)):
        raise ValueError(f"{who}: preds contain NaN or infinite values")
    if prob_preds and not (plo >= 0 and phi <= 1):
        raise ValueError(f"{who}: preds must be probabilities in [0, 1], got [{plo}, {phi}]")
    if label_kind == "binary":
        if not (tlo >= 0 and thi <= 1) or (t.is_floating_point() and not _all_in_01(t)):
            raise ValueError(f"{who}: binary target must be 0 or 1")
    elif label_kind == "real":
        if not (math.isfinite(tlo) and math.isfinite(thi)):
            raise ValueError(f"{who}: target contains NaN or infinite values")
    elif multihot:
        if not (tlo >= 0 and math.isfinite(thi)):
            raise ValueError(f"{who}: relevance must be finite and >= 0")
    else:
        ok = tlo >= 0 and (num_classes is None or thi < num_classes)
        if ok and t.is_floating_point():
            ok = bool((t == torch.floor(t)).all())
        if not ok:
            raise ValueError(f"{who}: target must be integer class ids in [0, {num_classes})")
    if w is not None:
        wlo, whi = ranges[2]
        if not (wlo >= 0 and math.isfinite(whi)):
            raise ValueError(f"{who}: weights must be finite and >= 0")
