"""Peeking: an A/A stream checked at 20 looks. Fixed-horizon intervals declare a difference
at some look far more often than 5 %; the confidence sequences at most 5 % (+ MC slack)."""

from __future__ import annotations

import numpy as np

import tests.service.metrics.stats.sims as sims

LOOKS = 20
PER_LOOK = 100
REPS = 300


def test_peeking_fixed_vs_sequential() -> None:
    rng = np.random.default_rng(21)
    results = np.array([sims.aa_peeking(rng, LOOKS, PER_LOOK) for _ in range(REPS)])
    fixed_rate, seq_rate = results.mean(axis=0)
    # 20 looks at a fixed 95 % interval: about 20-25 % false positives (one look: 5 %)
    assert fixed_rate > 0.12, fixed_rate
    # always-valid: at most 5 % + 1.6 Monte Carlo SE (sqrt(.05 * .95 / 300) = 1.3 %); ~1 % seen
    assert seq_rate <= 0.07, seq_rate


def test_sequence_covers_the_truth_at_every_look() -> None:
    """One arm's AUC stream (binormal, truth Φ(1/√2)): the fixed interval misses the truth at
    some of 20 looks far more often than 5 %, the confidence sequence at most 5 %."""
    rng = np.random.default_rng(22)
    misses = np.array([sims.one_arm_peeking(rng, LOOKS, PER_LOOK) for _ in range(REPS)])
    miss_fixed, miss_seq = misses.sum(axis=0)
    assert miss_fixed / REPS > 0.12, miss_fixed / REPS
    assert miss_seq / REPS <= 0.07, miss_seq / REPS
