"""Small training-loop helpers shared by the trainers: seeding, batching, progress."""

from __future__ import annotations

import copy
import logging
import os
import random
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def reproducible(seed: int, threads: int) -> np.random.Generator:
    """Seed every RNG and fix torch's threads (0: all cores) and algorithms for the rest of the process.

    A seed then gives the same network, byte for byte, for the same thread count
    on CPUs of the same kind (torch picks kernels by instruction set). The thread
    count matters because it sets the order in which floating-point sums are taken.
    """
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(True)
    return seed_everything(seed)


def as_float(patches: np.ndarray) -> torch.Tensor:
    """uint8 patches -> float32 tensor in [0, 1] (the models' input)."""
    return torch.from_numpy(patches).float().div_(255.0)


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def mean_loss(loss_fn: Callable[[np.ndarray], torch.Tensor], n: int, batch_size: int) -> float:
    """Average of a per-batch mean loss over n items, weighted by batch size."""
    total = 0.0
    for idx in minibatches(n, batch_size):
        total += float(loss_fn(idx)) * len(idx)
    return total / max(n, 1)


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[np.ndarray], torch.Tensor],
    n_train: int,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    val_loss_fn: Callable[[np.ndarray], torch.Tensor] | None = None,
    n_val: int = 0,
    desc: str = "training",
    progress: bool = True,
) -> list[dict]:
    """Minimise `loss_fn(batch indices)` for some epochs; keep the weights with the best validation loss.

    Validation uses held-out normal training clips only, never test data.
    """
    history = []
    best, best_state = float("inf"), None
    for epoch in range(1, epochs + 1):
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(
            list(minibatches(n_train, batch_size, rng)),
            desc=f"{desc} {epoch}/{epochs}",
            leave=False,
            disable=not progress,
        )
        for idx in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(idx)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.5f}")
        record = {"epoch": epoch, "train_loss": total / max(seen, 1)}
        if val_loss_fn is not None and n_val:
            model.eval()
            record["val_loss"] = mean_loss(val_loss_fn, n_val, 4 * batch_size)
            if record["val_loss"] < best:
                best, best_state = record["val_loss"], copy.deepcopy(model.state_dict())
        history.append(record)
        log.info(
            "%s epoch %d/%d: %s",
            desc,
            epoch,
            epochs,
            ", ".join(f"{k} {v:.6f}" for k, v in record.items() if k != "epoch"),
        )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
