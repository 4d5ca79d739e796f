"""The demo's synthetic click log: users, items, clicks and watch time, from a fixed seed.

Each impression pairs a user with an item. A click happens with probability
``sigmoid(<u, v> + dense . w + bias)`` of hidden user / item factors; watch
time (seconds) grows with a second user-item affinity and with the click. The
model never sees the hidden factors, only ids, the item's category and a few
dense features, so it has something to learn and the arms can differ.

Example::

    >>> data = make_click_data(num_samples=1000, num_users=50, num_items=80, seed=0)
    >>> len(data), data.dense.shape, data.user.dtype
    (1000, torch.Size([1000, 4]), torch.int64)
    >>> bool(0.05 < data.click.mean() < 0.6), bool((data.watch_time >= 0).all())
    (True, True)
    >>> train, test = data.split(0.8)
    >>> len(train), len(test)
    (800, 200)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["ClickData", "make_click_data"]

NUM_DENSE = 4
NUM_CATEGORIES = 20


@dataclass
class ClickData:
    """Columns of the click log, one row per impression."""

    user: torch.Tensor  # int64 user ids (also the grouping key of grouped AUC)
    item: torch.Tensor  # int64 item ids
    category: torch.Tensor  # int64 category of the item
    dense: torch.Tensor  # float32 (n, NUM_DENSE)
    click: torch.Tensor  # float32 0/1
    watch_time: torch.Tensor  # float32 seconds, >= 0

    def __len__(self) -> int:
        return int(self.click.shape[0])

    def slice(self, start: int, stop: int) -> ClickData:
        """Rows ``start:stop`` (views, no copy)."""
        return ClickData(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    def split(self, train_fraction: float) -> tuple[ClickData, ClickData]:
        """The first ``train_fraction`` of rows for training, the rest held out."""
        cut = int(len(self) * train_fraction)
        return self.slice(0, cut), self.slice(cut, len(self))

    def batches(self, batch_size: int) -> list[ClickData]:
        """Consecutive batches of ``batch_size`` rows (the last one may be shorter)."""
        return [
            self.slice(i, min(i + batch_size, len(self))) for i in range(0, len(self), batch_size)
        ]


def make_click_data(
    num_samples: int = 200_000,
    num_users: int = 2_000,
    num_items: int = 5_000,
    *,
    rank: int = 8,
    seed: int = 2024,
) -> ClickData:
    """Generate the click log deterministically from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    user_f = torch.randn(num_users, rank, generator=g) / rank**0.25
    item_f = torch.randn(num_items, rank, generator=g) / rank**0.25
    user_w = torch.randn(num_users, rank, generator=g) / rank**0.5
    item_cat = torch.randint(0, NUM_CATEGORIES, (num_items,), generator=g)
    cat_bias = torch.randn(NUM_CATEGORIES, generator=g) * 0.8
    w_dense = torch.randn(NUM_DENSE, generator=g) * 0.8
    w_watch = torch.randn(NUM_DENSE, generator=g) * 0.4
    cat_watch = torch.randn(NUM_CATEGORIES, generator=g) * 0.4
    # a few heavy users, many light ones: Zipf-like user activity
    activity = 1.0 / torch.arange(1, num_users + 1, dtype=torch.float64) ** 0.6
    user = torch.multinomial(activity, num_samples, replacement=True, generator=g)
    user = torch.randperm(num_users, generator=g)[user]
    item_pop = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64) ** 0.8
    item = torch.multinomial(item_pop, num_samples, replacement=True, generator=g)
    dense = torch.randn(num_samples, NUM_DENSE, generator=g)
    affinity = (user_f[user] * item_f[item]).sum(1)
    logit = 1.5 * affinity + dense @ w_dense + cat_bias[item_cat[item]] - 1.5
    click = torch.bernoulli(torch.sigmoid(logit), generator=g)
    taste = (user_w[user] * item_f[item]).sum(1)
    noise = torch.randn(num_samples, generator=g) * 0.3
    log_watch = 0.6 * taste + dense @ w_watch + cat_watch[item_cat[item]] + 0.5 * click + noise
    watch_time = 20.0 * torch.exp(log_watch)
    return ClickData(
        user=user,
        item=item,
        category=item_cat[item],
        dense=dense.float(),
        click=click.float(),
        watch_time=watch_time.float(),
    )
