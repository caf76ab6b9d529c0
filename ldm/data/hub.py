"""The hub layout: a `datasets` table with one image column and N caption columns (e.g. jxie/flickr8k).

A caption column may hold one string per row (jxie/flickr8k: caption_0..caption_4) or a list of strings
(Flickr30k's `caption`). With `streaming: true` rows are read as they arrive (`datasets` streaming), so a
set larger than the disk trains too: see `HubStream`.
"""

import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset

from ldm.data.dataset import CaptionDataset
from ldm.data.images import DECODE_ERRORS, ImageTransform


@dataclass(frozen=True)
class HubConfig:
    name: str  # a hub id, or a local folder of parquet/csv/... files that `load_dataset` reads
    image_column: str
    caption_columns: Sequence[str]
    train_split: str
    val_split: str
    test_split: str
    streaming: bool  # read rows as they arrive instead of downloading the split first
    shuffle_buffer: int  # streaming train: rows held for shuffling (datasets' approximate shuffle)

    def split_name(self, split: str) -> str:
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}[split]


def load_hub_split(hub: HubConfig, split: str):
    """The real `datasets.load_dataset` call: downloads (or reads the cache / a local folder)."""
    import datasets  # heavy import: only the hub layout pays for it

    return datasets.load_dataset(hub.name, split=hub.split_name(split))


def load_hub_stream(hub: HubConfig, split: str):
    """`datasets.load_dataset(..., streaming=True)`: an IterableDataset, nothing downloaded up front."""
    import datasets

    return datasets.load_dataset(hub.name, split=hub.split_name(split), streaming=True)


def row_captions(row: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
    """Non-empty stripped captions of a row; a column may hold a string or a list of strings."""
    values: list[Any] = []
    for column in columns:
        value = row[column]
        values.extend(value if isinstance(value, list | tuple) else [value])
    return [t.strip() for t in values if isinstance(t, str) and t.strip()]


class HubSource:
    """Rows of a `datasets` table; rows without any caption are dropped with ONE warning.

    Captions are read once up front (cheap text columns); images decode lazily per read.
    """

    def __init__(self, dataset, hub: HubConfig, split: str) -> None:
        columns = [hub.image_column, *hub.caption_columns]
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"hub dataset {hub.name!r} split {hub.split_name(split)!r} lacks columns {missing}; "
                f"it has {dataset.column_names}"
            )
        texts = dataset.select_columns(list(hub.caption_columns)).to_dict()
        rows = [
            row_captions({c: texts[c][i] for c in hub.caption_columns}, hub.caption_columns)
            for i in range(len(dataset))
        ]
        self.rows = [i for i, caps in enumerate(rows) if caps]
        self._captions = [rows[i] for i in self.rows]
        if len(self.rows) < len(dataset):
            empty = sorted(set(range(len(dataset))) - set(self.rows))
            warnings.warn(
                f"Flickr8k {split} ({hub.name}): skipped {len(empty)} of {len(dataset)} rows "
                f"without captions (e.g. rows {empty[:3]})",
                stacklevel=2,
            )
        self.images = dataset.select_columns([hub.image_column])
        self.image_column = hub.image_column
        self.label = f"{hub.name}[{hub.split_name(split)}]"

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, index: int) -> str:
        return f"{self.label} row {self.rows[index]}"

    def captions(self, index: int) -> Sequence[str]:
        return self._captions[index]

    def image(self, index: int) -> Image.Image:
        return self.images[self.rows[index]][self.image_column]


class HubStream(IterableDataset):
    """A streamed split as items {"pixel_values": (3, R, R), "caption": str}, like `CaptionDataset`'s.

    train: shuffled through a buffer of `hub.shuffle_buffer` rows, reshuffled each pass (`set_epoch`), with
    the same caption policy as `CaptionDataset` (a random caption, dropout to ""). Under DDP each rank reads
    its own part (`datasets.distributed.split_dataset_by_node`); DataLoader workers split a rank's shards
    (`datasets` does that itself). Rows without captions and images that fail to decode are skipped, with
    one warning per pass. A stream has no length: an epoch ends when the split is exhausted.
    """

    def __init__(
        self,
        stream,
        hub: HubConfig,
        split: str,
        transform: ImageTransform,
        *,
        train: bool,
        caption_dropout: float,
        seed: int,
        rank: int,
        world_size: int,
    ) -> None:
        from datasets import Image as ImageFeature
        from datasets.distributed import split_dataset_by_node

        columns = [hub.image_column, *hub.caption_columns]
        known = stream.column_names
        missing = [c for c in columns if known is not None and c not in known]
        if missing:
            raise ValueError(
                f"hub dataset {hub.name!r} split {hub.split_name(split)!r} lacks columns {missing}; it has {known}"
            )
        stream = stream.select_columns(columns)
        if stream.features is not None and isinstance(stream.features.get(hub.image_column), ImageFeature):
            # decode here, so one bad image is skipped instead of ending the stream with an exception
            stream = stream.cast_column(hub.image_column, ImageFeature(decode=False))
        if train:
            stream = stream.shuffle(seed=seed, buffer_size=hub.shuffle_buffer)
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.stream = stream
        self.hub = hub
        self.transform = transform
        self.train = train
        self.caption_dropout = caption_dropout
        self.label = f"{hub.name}[{hub.split_name(split)}]"
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        # each copy (main process, or a persistent DataLoader worker) counts its own passes
        self.stream.set_epoch(self.epoch)
        self.epoch += 1
        no_caption, bad = 0, []
        for row in self.stream:
            captions = row_captions(row, self.hub.caption_columns)
            if not captions:
                no_caption += 1
                continue
            try:
                with _open_image(row[self.hub.image_column]) as image:
                    pixel_values = self.transform(image)  # (3, R, R)
            except DECODE_ERRORS as e:
                bad.append(str(e))
                continue
            yield {"pixel_values": pixel_values, "caption": CaptionDataset._caption(self, captions)}
        if no_caption or bad:
            warnings.warn(
                f"Flickr8k stream {self.label}: skipped {no_caption} rows without captions and "
                f"{len(bad)} undecodable images{f' (e.g. {bad[0]})' if bad else ''}",
                stacklevel=2,
            )


def _open_image(value: Any) -> Image.Image:
    """A PIL image from what `datasets` yields: an image, or {"bytes", "path"} when decoding is off."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    raise ValueError(f"not an image: {type(value).__name__}")
