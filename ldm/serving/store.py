"""Finished images on disk (`out_dir`), so a restart loses nothing: each a PNG with its settings in text
chunks, as sample.py writes them, and a JSON sidecar with the job's status and its owner's hash.

Why atomic writes: a kill -9 in the middle of a write must not leave a half PNG that the next start would
serve. Each file is written to a hidden temporary name in the same folder and renamed into place (a rename is
atomic on one file system); leftovers of a killed write are removed at start. The sidecar is written last, and
only images with one are listed, so an image is served after a restart only when both files are whole.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.generation.output import slugify
from ldm.serving.jobs import DONE, Job

log = logging.getLogger(__name__)
TEMP_SUFFIX = ".partial"


@dataclass(frozen=True)
class StoredImage:
    """A finished job as its sidecar records it; the PNG stays on disk until asked for."""

    id: str
    owner: str
    png: Path
    status: dict[str, Any]  # what `GET /jobs/<id>` answered when it finished
    finished_at: float  # Unix time

    def snapshot(self) -> dict[str, Any]:
        return dict(self.status)

    def image(self) -> bytes:
        return self.png.read_bytes()


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class ImageStore:
    """The images under `folder`: loaded at start, added to as jobs finish."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._images: dict[str, StoredImage] = {}
        self._load()

    def _load(self) -> None:
        for leftover in self.folder.glob(f".*{TEMP_SUFFIX}"):  # a write a kill -9 interrupted
            leftover.unlink(missing_ok=True)
        for sidecar in self.folder.glob("*.json"):
            try:
                record = json.loads(sidecar.read_text())
                png = sidecar.with_suffix(".png")
                if not png.is_file():
                    raise FileNotFoundError(png)
                stored = StoredImage(record["id"], record["owner"], png, record["status"], record["finished_at"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("skipping %s: %s", sidecar, err)
                continue
            self._images[stored.id] = stored
        log.info("%d finished images in %s", len(self._images), self.folder)

    def save(self, job: Job, png: bytes, finished_at: float) -> StoredImage:
        """Write the job's PNG, then its sidecar; called by the worker before the job shows `done`."""
        s = job.settings
        name = f"{slugify(s.prompts[0])}-{s.seed}-{job.id}"
        status = {**job.snapshot(), "state": DONE, "position": 0, "eta_s": None, "step": job.steps}
        stored = StoredImage(job.id, job.owner, self.folder / f"{name}.png", status, finished_at)
        write_atomically(stored.png, png)
        record = {"id": job.id, "owner": job.owner, "status": status, "finished_at": finished_at}
        write_atomically(self.folder / f"{name}.json", json.dumps(record, ensure_ascii=False).encode())
        with self._lock:
            self._images[job.id] = stored
        return stored

    def get(self, job_id: str, owner: str) -> StoredImage | None:
        with self._lock:
            stored = self._images.get(job_id)
        return stored if stored is not None and stored.owner == owner else None

    def owned(self, owner: str) -> list[StoredImage]:
        """`owner`'s images, oldest first."""
        with self._lock:
            mine = [s for s in self._images.values() if s.owner == owner]
        return sorted(mine, key=lambda s: s.finished_at)

    def __len__(self) -> int:
        return len(self._images)
