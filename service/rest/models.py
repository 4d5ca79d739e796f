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


class ExperimentSummary(BaseModel):
    name: str
    arms: list[str]
    tasks: list[str]
    phases: list[str]
    samples: int


class ExperimentDetail(ExperimentSummary):
    runs: list[RunInfo]


class ExperimentList(BaseModel):
    experiments: list[ExperimentSummary]


class MetricsSnapshot(BaseModel):
    experiment: str
    arm: str
    task: str
    phase: str
    step: int = Field(description="the eval step (eval) or the last training step seen (train)")
    samples: int = Field(description="samples behind these values")
    metrics: MetricValues = Field(description="metric key -> value; null for NaN (undefined)")
    extras: MetricValues = Field(default_factory=dict, description="e.g. groups counted")
    version: int = Field(description="state version the values were computed at")
    stale: bool = Field(description="true when newer batches arrived; a refresh is under way")
    computed_at: float


class ArmComparison(BaseModel):
    step: int
    samples: int
    metrics: MetricValues
    delta: MetricValues = Field(description="this arm's value minus the baseline's")
    relative_delta: MetricValues = Field(description="delta / |baseline value|")
    stale: bool


class Comparison(BaseModel):
    experiment: str
    task: str
    phase: str
    baseline: str
    arms: dict[str, ArmComparison]


class HistoryPoint(BaseModel):
    step: int
    value: float | None


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
