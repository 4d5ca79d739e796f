"""Train one arm of the demo experiment and stream its metrics to rankboard.

:func:`train_arm` builds the :class:`~rankboard.trainer.demo.model.DemoDLRM`,
attaches the arm's fused sparse optimizer, shards the embedding tables with
``DistributedModelParallel`` over the current gloo process group (world size 1
in ``make demo``, 2 under ``torchrun``), builds the dense optimizer and the
learning-rate schedules from the arm's ``train_config`` text file, and trains.
Every step logs the training predictions of both tasks; every ``eval_every``
steps (and at the end) an evaluation pass over the held-out rows logs eval
predictions with the user id as grouping key. With several ranks each rank
trains on its share of every global batch, evaluates its share of the held-out
rows and streams them as its own producer (``<run id>/rank<k>``): the service's
metrics are over the union.

The arm can also run on its own against a running service (this is what the
docker-compose trainer containers do)::

    python -m rankboard.trainer.demo.train --target 127.0.0.1:50051 --arm control \\
        --config rankboard/trainer/demo/control.config
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv
from tqdm import tqdm

from rankboard.protos import loss_pb2, parse_text, train_pb2
from rankboard.protos.text import parse_file
from rankboard.trainer.client import MetricsStream
from rankboard.trainer.demo.data import NUM_CATEGORIES, ClickData, make_click_data
from rankboard.trainer.demo.model import DemoDLRM, model_inputs
from rankboard.trainer.loss import create_loss
from rankboard.trainer.optim import TrainOptimizers, apply_sparse_optimizer, build_optimizers
from rankboard.trainer.optim.fused import table_wise_sharding_plan

__all__ = [
    "CONFIG_DIR",
    "METRICS",
    "DemoSettings",
    "ensure_process_group",
    "main",
    "train_arm",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent
EXPERIMENT = "demo"

# Metric declarations per (task, phase), in tzrec text form (parsed by the client).
METRICS: dict[tuple[str, str], str] = {
    ("ctr", "train"): "train_metrics { auc {} decay_rate: 0.9 decay_step: 10 }",
    ("ctr", "eval"): (
        "metrics { auc { thresholds: 0 } } "
        'metrics { grouped_auc { grouping_key: "user" } } '
        "metrics { normalized_entropy {} }"
    ),
    ("watch_time", "train"): "train_metrics { mean_squared_error {} decay_step: 10 }",
    ("watch_time", "eval"): (
        "metrics { xauc {} } metrics { mean_squared_error {} } metrics { mean_absolute_error {} }"
    ),
}
LOSSES = {"ctr": "binary_cross_entropy {}", "watch_time": "l2_loss {}"}


@dataclass
class DemoSettings:
    """Sizes of the demo's data and training run (defaults: ``make demo``).

    >>> DemoSettings.tiny().num_samples
    6000
    """

    num_samples: int = 400_000
    num_users: int = 2_000
    num_items: int = 5_000
    train_fraction: float = 0.8
    batch_size: int = 1024
    steps: int | None = None  # None: the config's num_steps
    eval_every: int = 150
    eval_batch_size: int = 8192
    seed: int = 2024

    @classmethod
    def tiny(cls) -> DemoSettings:
        """A run of a few seconds, for tests."""
        return cls(
            num_samples=6000,
            num_users=100,
            num_items=300,
            batch_size=256,
            steps=12,
            eval_every=6,
            eval_batch_size=1000,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_process_group() -> None:
    """Initialize a gloo process group: torchrun's (from env) or a world of one."""
    if dist.is_initialized():
        return
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group("gloo")
        return
    store = dist.TCPStore("127.0.0.1", _free_port(), 1, is_master=True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)


def build_model(
    train_config: train_pb2.TrainConfig, settings: DemoSettings
) -> tuple[DistributedModelParallel, TrainOptimizers]:
    """The sharded model and its optimizers (sparse fused, dense + schedules)."""
    device = torch.device("cpu")
    model = DemoDLRM(settings.num_users, settings.num_items, NUM_CATEGORIES)
    apply_sparse_optimizer(model, train_config.sparse_optimizer, device)
    world = dist.get_world_size()
    plan = table_wise_sharding_plan(model, device, world_size=world)
    dmp = DistributedModelParallel(
        module=model,
        device=device,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        plan=plan,
    )
    return dmp, build_optimizers(dmp, train_config, device=device)


def _log_eval(
    model: torch.nn.Module,
    data: ClickData,
    stream: MetricsStream,
    step: int,
    batch_size: int,
    first_row: int = 0,
) -> None:
    """Score the held-out rows and stream them with their row numbers as sample ids:
    both arms score the same eval set, so the service pairs their comparison."""
    model.eval()
    row = first_row
    with torch.no_grad():
        for batch in data.batches(batch_size):
            logit, log_watch = model(*model_inputs(batch))
            ids = torch.arange(row, row + len(batch), dtype=torch.int64)
            row += len(batch)
            for task, preds, labels in (
                ("ctr", torch.sigmoid(logit), batch.click),
                ("watch_time", torch.exp(log_watch), batch.watch_time),
            ):
                stream.log(
                    preds,
                    labels,
                    task=task,
                    phase="eval",
                    step=step,
                    grouping_keys={"user": batch.user},
                    sample_ids=ids,
                )
    model.train()


def train_arm(
    target: str,
    arm: str,
    config_path: str | Path,
    *,
    settings: DemoSettings | None = None,
    experiment: str = EXPERIMENT,
    run_id: str | None = None,
    token: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``arm`` with the ``train_config`` at ``config_path``, streaming to ``target``.

    Returns a small summary (steps, seconds, final losses) of this rank.
    """
    settings = settings or DemoSettings()
    ensure_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(settings.seed)  # same initial weights for both arms
    train_config = parse_file(config_path, train_pb2.TrainConfig())
    steps = settings.steps or train_config.num_steps or 300
    data = make_click_data(
        settings.num_samples, settings.num_users, settings.num_items, seed=settings.seed
    )
    train_data, eval_data = data.split(settings.train_fraction)
    eval_first = len(eval_data) * rank // world
    eval_share = eval_data.slice(eval_first, len(eval_data) * (rank + 1) // world)
    model, opts = build_model(train_config, settings)
    losses = {t: create_loss(parse_text(text, loss_pb2.LossConfig())) for t, text in LOSSES.items()}
    log_watch_target = torch.log(train_data.watch_time)
    per_epoch = len(train_data) // settings.batch_size
    start = time.monotonic()
    loss_ctr = loss_wt = float("nan")
    # the producer id is "<run_id>/rank<rank>", the rank torch.distributed's (default_rank)
    with MetricsStream(
        target, experiment=experiment, arm=arm, run_id=run_id, metrics=METRICS, token=token
    ) as stream:
        bar = tqdm(
            total=steps,
            desc=f"{arm:>9}",
            unit="step",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
            file=sys.stdout,
        )
        for step in range(1, steps + 1):
            lo = ((step - 1) % per_epoch) * settings.batch_size
            # each rank takes its share of the global batch
            share = settings.batch_size // world
            batch = train_data.slice(lo + rank * share, lo + (rank + 1) * share)
            target_wt = log_watch_target[lo + rank * share : lo + (rank + 1) * share]
            opts.zero_grad()
            logit, log_watch = model(*model_inputs(batch))
            l_ctr = losses["ctr"](logit, batch.click)
            l_wt = losses["watch_time"](log_watch, target_wt)
            opts.backward(l_ctr + 0.5 * l_wt)
            opts.step()
            stream.log(torch.sigmoid(logit), batch.click, task="ctr", phase="train", step=step)
            stream.log(
                torch.exp(log_watch), batch.watch_time, task="watch_time", phase="train", step=step
            )
            loss_ctr, loss_wt = float(l_ctr.detach()), float(l_wt.detach())
            if step % settings.eval_every == 0 or step == steps:
                bar.set_postfix_str(f"loss {loss_ctr:.4f} | eval @ {step}")
                _log_eval(model, eval_share, stream, step, settings.eval_batch_size, eval_first)
            elif step % 10 == 0:
                bar.set_postfix_str(f"loss {loss_ctr:.4f}")
            bar.update(1)
        stream.flush()
        bar.close()
        stats = stream.stats
    logger.info("arm %s rank %d: %s", arm, rank, stats)
    return {
        "steps": float(steps),
        "seconds": time.monotonic() - start,
        "loss_ctr": loss_ctr,
        "loss_watch_time": loss_wt,
        "samples_sent": float(stats.logged_samples),
        "rank": float(rank),
        "world_size": float(world),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train one arm against a running service."""
    from rankboard.trainer.demo.run import _quiet_libraries, add_env_flag, demo_parser

    p = demo_parser(".train", "train one arm of the demo and stream its metrics")
    add_env_flag(
        p, "--target", "RANKBOARD_TARGET", "127.0.0.1:50051", "the service's gRPC host:port"
    )
    p.add_argument("--arm", required=True, help="arm name, e.g. control or treatment")
    p.add_argument(
        "--config",
        default=None,
        help="train_config text file (default: packaged <arm>.config, else control.config)",
    )
    p.add_argument("--experiment", default=EXPERIMENT)
    p.add_argument("--steps", type=int, default=None, help="override the config's num_steps")
    p.add_argument("--run-id", default=None, help="producer run id (default: torchrun's / random)")
    p.add_argument("--token", default=None, help="write token (or RANKBOARD_TOKEN)")
    p.add_argument("--tiny", action="store_true", help="a few-second run (tests, smoke checks)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _quiet_libraries()
    settings = DemoSettings.tiny() if args.tiny else DemoSettings()
    if args.steps:
        settings.steps = args.steps
    config = args.config or CONFIG_DIR / f"{args.arm}.config"
    if args.config is None and not Path(config).exists():
        config = CONFIG_DIR / "control.config"
    try:
        summary = train_arm(
            args.target,
            args.arm,
            config,
            settings=settings,
            experiment=args.experiment,
            run_id=args.run_id,
            token=args.token,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(
        f"arm {args.arm}: {int(summary['steps'])} steps in {summary['seconds']:.1f} s, "
        f"final ctr loss {summary['loss_ctr']:.4f}"
        + (
            f" (rank {summary['rank']:.0f} of {summary['world_size']:.0f})"
            if summary["world_size"] > 1
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
