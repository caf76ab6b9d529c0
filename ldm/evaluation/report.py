"""What an evaluation leaves behind: eval.json, a printed table, and a side-by-side grid of the same
prompts and seeds (base model | fine-tuned)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

VARIANTS = {"base": "base model", "finetuned": "fine-tuned"}
_TEXT = (20, 20, 20)


def run_folder(checkpoint: str | Path) -> Path:
    """The training run a checkpoint belongs to: `<run>/checkpoints/*.ckpt`, `<run>/final_model/final_weights.pt`
    and `<run>/final_model/` all sit one level below it; anything else: the folder the checkpoint is in."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    return folder.parent if folder.name in ("checkpoints", "final_model") else folder


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _row(label: str, base: float | None, tuned: float | None, better: str) -> str:
    cells = [f"{v:>12.4f}" if v is not None else f"{'—':>12}" for v in (base, tuned)]
    change = f"{tuned - base:>+12.4f}" if base is not None and tuned is not None else f"{'':>12}"
    return f"{label + ' ' + better:<36}{cells[0]}{cells[1]}{change}"


def format_table(report: Mapping[str, Any]) -> str:
    """Plain-text table: one row per metric, base and fine-tuned side by side (↑ higher is better, ↓ lower)."""
    metrics = report["metrics"]
    lines = [f"{'metric':<36}{'base model':>12}{'fine-tuned':>12}{'change':>12}", "-" * 72]
    marked = {name: row["optimised_by_training"] for name, row in metrics["clip_score"].items() if _optimised(row)}
    for name, row in metrics["clip_score"].items():
        lines.append(_row(f"CLIP score {name}{' *' * _optimised(row)}", row["base"], row["finetuned"], "↑"))
    fid = metrics["fid_inception"]
    if "skipped" in fid:
        lines.append(f"{'FID (Inception) ↓':<36}skipped: {fid['skipped']}")
    else:
        lines.append(_row("FID (Inception)", fid["base"], fid["finetuned"], "↓"))
    for name, row in metrics.get("fd_clip", {}).items():
        lines.append(_row(f"FD on CLIP {name} features{' *' * _optimised(row)}", row["base"], row["finetuned"], "↓"))
    for attr, value in (metrics.get("adherence") or {}).get("finetuned", {}).items():
        lines.append(_row(f"adherence {attr}", metrics["adherence"]["base"][attr], value, "↑"))
    drift = metrics["embedding_drift"]["mean_cosine_drift"]
    lines.append(_row("prompt embedding drift (1 - cos)", None, drift, ""))
    lines += [f"* {name}: {note}" for name, note in marked.items()]
    return "\n".join(lines)


def _optimised(row: Mapping[str, Any]) -> bool:
    return "optimised_by_training" in row


def side_by_side(
    prompts: Sequence[str],
    seeds: Sequence[int],
    images: Mapping[str, Sequence[Image.Image]],
    *,
    text_width: int = 240,
    min_width: int = 128,
) -> Image.Image:
    """One row per prompt: its text and seed, then the image of each variant (same prompt, same seed).

    Images narrower than `min_width` are enlarged by a whole factor (nearest neighbour: pixels stay pixels).
    """
    width, height = images[next(iter(images))][0].size
    scale = max(1, -(-min_width // width))
    width, height = width * scale, height * scale
    gap, header = 4, 20
    font = ImageFont.load_default(size=12)
    columns = len(images)
    canvas = Image.new("RGB", (text_width + (width + gap) * columns, header + (height + gap) * len(prompts)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, variant in enumerate(images):
        draw.text((text_width + col * (width + gap) + 2, 4), VARIANTS.get(variant, variant), fill=_TEXT, font=font)
    lines_per_row = max(1, (height - 4) // 14)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        top = header + row * (height + gap)
        text = textwrap.wrap(f"{prompt} (seed {seed})", width=text_width // 7)[:lines_per_row]
        draw.multiline_text((4, top + 2), "\n".join(text), fill=_TEXT, font=font, spacing=2)
        for col, variant in enumerate(images):
            image = images[variant][row].resize((width, height), Image.Resampling.NEAREST)
            canvas.paste(image, (text_width + col * (width + gap), top))
    return canvas
