"""Files shipped with the package (the offline CLIP tokenizer, the lists of prompts to preserve)."""

from pathlib import Path

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
PRESERVE_PROMPTS_DIR = Path(__file__).resolve().parent / "preserve_prompts"
