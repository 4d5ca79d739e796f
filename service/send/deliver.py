"""Delivering the prepared parts: one :class:`rankboard.protos.stream.Sender` per arm,
batches encoded by the wire codec, a progress bar of acknowledged samples, and the
outcome said once (applied, already there, refused, or the service stopped answering).

At most ``_MAX_UNACKED_SAMPLES`` samples are in flight per arm: the memory bound of a
send. grpc, tqdm and the sender are imported when a send starts.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from rankboard.service.send.declare import declared_configs
from rankboard.service.send.errors import SendInputError, say
from rankboard.service.send.prepare import Part

__all__ = ["deliver"]


def _check_reachable(target: str, timeout: float) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise SendInputError(
            f"cannot reach the service at {target} (no answer in {timeout:g} s;"
            " is `rankboard serve` running there? --timeout to wait longer)"
        ) from None
    finally:
        channel.close()


_MAX_UNACKED_SAMPLES = 2_000_000  # in flight per arm: the memory bound of a send


def deliver(
    args: argparse.Namespace, data: dict[str, np.ndarray], parts: list[Part], declaration: str
) -> int:
    import logging

    try:  # before grpc's channels open: an unreachable service answers in seconds
        _check_reachable(args.target, args.timeout)
    except SendInputError as err:
        say(str(err))
        return 2
    from rankboard.protos.stream import (
        FlushTimeout,
        MetricsStreamError,
        RejectedBatchesError,
        Sender,
    )

    # the sender logs rejections and fatal errors; this command says them once itself
    logging.getLogger("rankboard.protos.stream").setLevel(logging.CRITICAL)
    from tqdm import tqdm

    total = sum(len(p.rows) for p in parts)
    configs = declared_configs(declaration, args.phase)
    token = args.token if args.token is not None else os.environ.get("RANKBOARD_TOKEN") or None
    bar = tqdm(
        total=total,
        unit="samples",
        desc=f"send {args.file.name}",
        disable=args.no_progress,
        unit_scale=True,
    )
    failure: str | None = None
    try:
        for part in parts:
            part.stream = Sender(
                args.target,
                part.producer_id,
                token=token,
                first_sequence=1,
                ack_timeout=max(args.timeout, 5.0),
            )
            part.stream.start()
        done_before = 0
        for part in parts:
            failure = _send_part(args, data, part, configs, bar, done_before)
            done_before += len(part.rows)
            if failure:
                break
        for part in parts:
            if failure:
                break
            try:
                part.stream.flush(timeout=args.timeout)
            except RejectedBatchesError as err:
                failure = _rejection_text(err)
            except FlushTimeout:
                failure = (
                    f"the service at {args.target} stopped acknowledging"
                    f" (no progress for {args.timeout:g} s)"
                )
            except MetricsStreamError as err:
                failure = str(err)
            part.stats = part.stream.stats()
    finally:
        bar.close()
        for part in parts:
            if part.stream is not None:
                part.stream.close()
    if failure:
        say(failure)
        return 1
    run = f"{args.experiment}/{{}}/{args.task}/{args.phase} step {args.step}"
    for part in parts:
        s = part.stats
        where = run.format(part.arm)
        if s["sent_batches"] and s["duplicate_batches"] == s["sent_batches"]:
            say(
                f"{where}: already sent: the service had every batch of this file for this run,"
                " nothing changed (--replace sends it again on purpose)"
            )
        elif s["duplicate_batches"]:
            say(
                f"{where}: {s['applied_samples']:,} samples applied; {s['duplicate_batches']}"
                " batches were there already (an earlier send of this file), not counted twice"
            )
        else:
            say(f"{where}: {s['applied_samples']:,} samples applied")
    return 0


def _rejection_text(err: Any) -> str:
    rejections = err.rejections
    messages: dict[str, int] = {}
    for r in rejections:
        key = f"{r.code_name}: {r.message}"
        messages[key] = messages.get(key, 0) + r.samples
    lines = [
        f"rejected by the service ({len(rejections)} batch"
        f"{'es' if len(rejections) != 1 else ''}; a rejected batch changes nothing):"
    ]
    lines += [f"  {m} ({n:,} samples)" for m, n in messages.items()]
    return "\n".join(lines)


def _send_part(
    args: argparse.Namespace,
    data: dict[str, np.ndarray],
    part: Part,
    configs: list[Any],
    bar: Any,
    before: int,
) -> str | None:
    """Send one arm's rows batch by batch; the bar follows acknowledged samples."""
    from rankboard.protos import wire
    from rankboard.protos.stream import FlushTimeout, MetricsStreamError, RejectedBatchesError

    sender = part.stream
    rows = part.rows
    keys = [k for k in data if k.startswith("key:")]
    preds = data["predictions"]
    classes = preds.shape[1] if preds.ndim == 2 and preds.shape[1] > 1 else 0
    last_progress, last_done, sent = time.monotonic(), -1, 0

    def refresh() -> str | None:
        nonlocal last_progress, last_done
        s = sender.stats()
        done = sent - s["unacked_samples"]
        if done != last_done:
            last_done, last_progress = done, time.monotonic()
            bar.n = before + done
            bar.refresh()
        try:  # a fatal error (authentication) or a refused batch ends the send at once
            sender.flush(timeout=args.timeout if s["rejected_batches"] else 0)
        except FlushTimeout:
            pass
        except RejectedBatchesError as err:
            return _rejection_text(err)
        except MetricsStreamError as err:
            return str(err)
        if s["unacked_samples"] and time.monotonic() - last_progress > args.timeout:
            return (
                f"the service at {args.target} stopped acknowledging (no progress for"
                f" {args.timeout:g} s; last error: {s['last_error']})"
            )
        return None

    for start in range(0, len(rows), args.batch_size):
        while sender.stats()["unacked_samples"] >= _MAX_UNACKED_SAMPLES:
            if (problem := refresh()) is not None:
                return problem
            time.sleep(0.05)
        idx = rows[start : start + args.batch_size]
        batch = wire.encode_batch(
            producer_id=part.producer_id,
            experiment=args.experiment,
            arm=part.arm,
            task=args.task,
            phase=args.phase,
            step=args.step,
            predictions=preds[idx],
            labels=data["labels"][idx],
            num_classes=classes,
            weights=data["weights"][idx] if "weights" in data else None,
            grouping_keys={k[4:]: data[k][idx] for k in keys},
            sample_ids=data["sample_ids"][idx] if "sample_ids" in data else None,
            metrics=configs,
        )
        sender.send([(batch, len(idx))])
        sent += len(idx)
        part.batches += 1
        if (problem := refresh()) is not None:
            return problem
    while sender.stats()["unacked_samples"]:
        if (problem := refresh()) is not None:
            return problem
        time.sleep(0.05)
    return refresh()
