"""A train DataLoader that resumes mid-epoch exactly where a killed run stopped.

Why: Lightning restores the step, optimizer and LR schedule, but after a mid-epoch resume a plain
DataLoader starts its epoch over with a new shuffle (drawn from an RNG that is no longer where it was),
and per-item randomness (which caption, caption dropout, crops) differs too. Lightning's supported hook for
this is a loader with `state_dict()` / `load_state_dict()`: it saves that state in every checkpoint and
hands it back on resume. Here the order of an epoch depends only on (seed, epoch) (a `DistributedSampler`,
which also shards for DDP so Lightning leaves it in place), each item's randomness only on (seed, epoch,
index), and the saved state is just (epoch, batches already yielded).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ldm.seeds import step_seed


class SeededItems(Dataset):
    """Reads `dataset[index]` for a key `(index, seed)` with torch's RNG seeded by `seed`.

    The global RNG is forked, so reading items leaves the training step's randomness untouched, and the
    same key gives the same item in any process or DataLoader worker. Only the CPU generator is seeded:
    `torch.manual_seed` would also reseed every GPU's generator (which `fork_rng(devices=[])` does not
    restore), and on a CPU-only build it queues a lazy CUDA seeding with a stack trace each time: 3 ms an
    item, a third of a shapes-world stage-2 step under cProfile.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """Keys `(index, item seed)` in an order fixed by (seed, epoch); `skip` drops the first N of one pass.

    The rank and world size come from `torch.distributed` when it is initialised (DDP), else 1 process.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        for index in itertools.islice(super().__iter__(), skip, None):
            yield index, step_seed(self.seed, self.epoch, index)


class ResumableDataLoader(DataLoader):
    """A DataLoader over `SeededItems` + `ResumableSampler` whose state Lightning checkpoints.

    state: {"epoch", "batches"} = batches yielded in the current pass. With a sized loader Lightning
    fetches no batch ahead, so the count at checkpoint time is exactly the batches the model has seen.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, **kwargs: Any) -> None:
        items = dataset if isinstance(dataset, SeededItems) else SeededItems(dataset)
        sampler = ResumableSampler(items, shuffle=shuffle, seed=seed)
        super().__init__(items, batch_size=batch_size, sampler=sampler, **kwargs)
        self._batches = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume, self._resume = self._resume, None
        self._batches = 0
        if resume is not None and resume["epoch"] == self.sampler.epoch:
            self._batches = resume["batches"]
            self.sampler.skip = self._batches * self.batch_size
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
