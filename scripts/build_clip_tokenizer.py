"""Build the offline CLIP tokenizer folder (ldm/assets/clip_tokenizer) from CLIP's BPE merges file.

Why: hub tokenizers can't be fetched offline, but the CLIP vocabulary is fully determined by the merges
file that CLIP packages ship (`bpe_simple_vocab_16e6.txt.gz`, e.g. inside the open-clip-torch wheel).

    pip download --no-deps open-clip-torch -d /tmp/oc && unzip -o /tmp/oc/*.whl -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transformers import CLIPTokenizer

NUM_MERGES = 49152 - 256 - 2  # as CLIP's SimpleTokenizer slices the file
OUT_DIR = Path(__file__).resolve().parents[1] / "ldm" / "assets" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map (same order CLIP uses for ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Ids: byte symbols, the same with `</w>`, the merges joined, then the two special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    with gzip.open(args.bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    vocab = build_vocab(merges)
    assert len(vocab) == 49408, len(vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (args.out / "merges.txt").write_text(merges_txt, encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(args.out / "vocab.json"), merges=str(args.out / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({len(vocab)} ids)")


if __name__ == "__main__":
    main()
