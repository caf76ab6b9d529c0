"""Files shipped with the package (the offline CLIP tokenizer)."""

from pathlib import Path

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
