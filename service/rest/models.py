"""Pydantic response models of the REST API (they make the OpenAPI schema exact)."""

from __future__ import annotations

from pydantic import BaseModel, Field

MetricValues = dict[str, float | None]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class RunInfo(BaseModel):
    arm: str
    task: str
    phase: str
    samples: int
    steps: list[int] = Field(description="eval steps held (eval runs); empty for train runs")
    last_step: int
    metrics: list[str] = Field(description="result keys of the run's metrics")
    declaration: str = Field(description="the run's MetricConfig / TrainMetricConfig, text format")
    declared: bool = Field(description="false when the run uses the default metrics")
    retained_bytes: int = Field(
        description="memory of the run's retained per-sample state (exact metrics keep"
        " samples; binned and summed ones do not), counted against --max-retained-mb"
    )
    updated_at: float = Field(description="time of the run's last batch (unix seconds)")


class ExperimentSummary(BaseModel):
    name: str
    arms: list[str]
    tasks: list[str]
    phases: list[str]
    samples: int
    updated_at: float = Field(description="time of the last batch (unix seconds)")


class ExperimentDetail(ExperimentSummary):
    runs: list[RunInfo]


class ExperimentList(BaseModel):
    experiments: list[ExperimentSummary]


Interval = list[float] | None
Intervals = dict[str, Interval]


class _Statistics(BaseModel):
    """Fields shared by a snapshot and an arm of a comparison."""

    step: int = Field(description="the eval step (eval) or the last training step seen (train)")
    samples: int = Field(description="samples behind these values")
    positives: int | None = Field(None, description="samples with label 1 (binary runs)")
    negatives: int | None = Field(None, description="samples with label 0 (binary runs)")
    groups: dict[str, int] = Field(
        default_factory=dict, description="groups counted by each grouped metric"
    )
    metrics: MetricValues = Field(description="metric key -> value; null for NaN (undefined)")
    standard_errors: MetricValues = Field(
        default_factory=dict, description="standard error of each value (null: none)"
    )
    intervals: Intervals = Field(
        default_factory=dict,
        description="[low, high] at level 1 - alpha (a confidence sequence when sequential);"
        " null for train (decayed) metrics and where none can be computed",
    )
    methods: dict[str, str] = Field(
        default_factory=dict,
        description="how each interval was computed: delong, delong-clustered,"
        " delta-over-groups, u-statistic, delta, poisson-bootstrap, none, ...",
    )
    stale: bool = Field(description="true when newer batches arrived; a refresh is under way")
    computed_at: float


class MetricsSnapshot(_Statistics):
    experiment: str
    arm: str
    task: str
    phase: str
    extras: MetricValues = Field(default_factory=dict, description="e.g. groups counted")
    version: int = Field(description="state version the values were computed at")
    alpha: float
    sequential: bool
    cluster: str | None = Field(description="the key column used as independent units")


class ArmComparison(_Statistics):
    delta: MetricValues = Field(description="this arm's value minus the baseline's")
    relative_delta: MetricValues = Field(description="delta / |baseline value|")
    delta_intervals: Intervals = Field(description="interval of the delta (null: baseline)")
    delta_standard_errors: MetricValues
    p_values: MetricValues = Field(
        description="two-sided p-value of H0: no difference (always-valid when sequential)"
    )
    verdicts: dict[str, str | None] = Field(
        description="better | worse | inconclusive by the metric's direction (null: baseline)"
    )
    paired: bool = Field(description="deltas paired on shared sample ids")
    paired_samples: int
    pairing: str = Field(description="why the comparison is (not) paired")
    cluster: str | None


class Comparison(BaseModel):
    experiment: str
    task: str
    phase: str
    baseline: str
    step: int | None = Field(description="the eval step compared (null for train)")
    note: str | None = Field(description="e.g. arms that have later steps than the one compared")
    alpha: float
    sequential: bool
    horizon: int | None
    cluster: str | None
    arms: dict[str, ArmComparison]


class HistoryPoint(BaseModel):
    step: int
    value: float | None
    low: float | None = Field(None, description="interval low (eval steps), null where none")
    high: float | None = None


class History(BaseModel):
    experiment: str
    arm: str
    task: str
    phase: str
    metric: str
    points: list[HistoryPoint]


class Deleted(BaseModel):
    experiment: str
    runs_deleted: int
