"""The hub layout: a `datasets` table with one image column and N caption columns (e.g. jxie/flickr8k)."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class HubConfig:
    name: str  # a hub id, or a local folder of parquet/csv/... files that `load_dataset` reads
    image_column: str
    caption_columns: Sequence[str]
    train_split: str
    val_split: str
    test_split: str

    def split_name(self, split: str) -> str:
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}[split]


def load_hub_split(hub: HubConfig, split: str):
    """The real `datasets.load_dataset` call: downloads (or reads the cache / a local folder)."""
    import datasets  # heavy import: only the hub layout pays for it

    return datasets.load_dataset(hub.name, split=hub.split_name(split))


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
            [t.strip() for t in (texts[c][i] for c in hub.caption_columns) if t and t.strip()]
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
