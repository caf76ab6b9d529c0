"""Which words did stage 3 learn? Adherence per attribute value, where the report gives one mean per attribute.

python benchmarks/shapes_words.py --checkpoint outputs/DATE/TIME/checkpoints/last.ckpt        # the demo's world
python benchmarks/shapes_words.py --world .cache/shapes-seeds/seed-2/shapes --checkpoint CKPT --name shapes_words-seed-2
python benchmarks/shapes_words.py --world W --checkpoint CKPT --copy-row west=left   # can the encoder say it at all?
python benchmarks/shapes_words.py --world W --checkpoint base --vocabulary base       # the base model, per word

Renders the held-out and the training templates of one vocabulary (`--prompts` each, every combination of
shape, colour and position equally often, prompt i with seed i) with the demo report's sampler
(conf/experiment/shapes.yaml: callbacks.adherence) on the torch path, as the report does, and judges each
image with the world's judge. For each value it prints the share judged right with its 95% interval and
what the judge saw instead. A word at chance under both template sets was not learned at all; one right
under the training templates only did not carry to a new sentence.

Why a benchmark: it needs a trained world (`make demo`, or the seed study's `.cache/shapes-seeds/seed-N`)
and a minute of sampling. The table goes to benchmarks/results/<--name>.{md,json} with the machine, the
command and the date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compose_project_config, default_cache_dir, table, write_results

TEMPLATE_SETS = ("held_out", "train")
BASE_MODEL = "base"  # --checkpoint base: the world's base model itself, what a word's drop is read against


def copy_rows(module: Any, pairs: list[str]) -> None:
    """`WORD=SOURCE`: give WORD's token-embedding row SOURCE's. Why: whether the encoder *can* say a word that
    stage 3 never learned (copy a known word's row into it and judge again) tells an optimisation failure from a
    model that cannot express it."""
    tokenizer, table = module.tokenizer, module.text_encoder.get_input_embeddings().weight
    for pair in pairs:
        word, _, source = pair.partition("=")
        ids = [tokenizer(w, add_special_tokens=False).input_ids for w in (word, source)]
        if not word or not source or any(len(i) != 1 for i in ids):
            raise SystemExit(f"error: --copy-row {pair!r}: expected WORD=SOURCE, two words of one CLIP token each")
        with __import__("torch").no_grad():
            table[ids[0][0]] = table[ids[1][0]]


def judged(
    world: Path, checkpoint: str, vocabulary: str, prompts: int, threads: int, copy: list[str] = ()
) -> dict[str, Any]:
    """accuracy_by_value per template set, rendered as the demo's adherence report renders."""
    import torch

    from benchmarks.adherence import compose_sample
    from ldm.generation.loading import load_for_inference
    from ldm.world.adherence import SamplingPlan, accuracy_by_value, eval_prompts, render, to_pixels
    from ldm.world.export import load_judge

    torch.set_num_threads(threads)
    report = compose_project_config("train", ["experiment=shapes"]).callbacks.adherence
    plan = SamplingPlan(
        report.steps, report.guidance_scale, report.scheduler, report.seed, report.batch_size,
        guidance_rescale=report.guidance_rescale,
    )  # fmt: skip
    judge, _ = load_judge(world / "judge")
    chosen_checkpoint = None if checkpoint == BASE_MODEL else checkpoint
    cfg = compose_sample(str(world / "base"), chosen_checkpoint, ["engine.backend=torch", "dtype=fp32"])
    module = load_for_inference(cfg, base_override=True)
    copy_rows(module, list(copy))
    result = {}
    for templates in TEMPLATE_SETS:
        chosen = eval_prompts(vocabulary, prompts, templates, plan.seed)
        images = render(module, chosen, plan, desc=templates)
        result[templates] = accuracy_by_value(judge.predict(to_pixels(images)), chosen)
    return result


def words_table(result: dict[str, Any], vocabulary: str) -> str:
    """One row per attribute value: its word, and per template set its share [95% interval] and confusions."""
    from ldm.world.vocab import ATTRIBUTES, VALUES, VOCABULARIES

    words = VOCABULARIES[vocabulary].words
    rows = []
    for attr in ATTRIBUTES:
        for value in VALUES[attr]:
            row = [attr, value, words[attr][value]]
            for templates in TEMPLATE_SETS:
                cell = result[templates][attr][value]
                low, high = cell["ci95"]
                row.append(f"{100 * cell['accuracy']:.1f} [{100 * low:.0f}, {100 * high:.0f}]")
                row.append(", ".join(f"{other} {count}" for other, count in list(cell["instead"].items())[:3]) or "-")
            rows.append(row)
    headers = ["attribute", "value", f"{vocabulary} word", "held-out sentence %", "seen instead",
               "training sentences %", "seen instead"]  # fmt: skip
    return table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=default_cache_dir() / "shapes", help="a shapes cache folder")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="the stage-3 checkpoint (or final_model/) to judge; `base`: the base model itself",
    )
    parser.add_argument("--vocabulary", choices=["new", "base"], default="new")
    parser.add_argument("--prompts", type=int, default=360, help="prompts per template set (120 a cycle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--name", default="shapes_words")
    parser.add_argument(
        "--copy-row", nargs="*", default=[], metavar="WORD=SOURCE", help="e.g. west=left (see copy_rows)"
    )
    args = parser.parse_args(argv)
    for needed in (args.world / "base", args.world / "judge"):
        if not needed.is_dir():
            parser.error(f"--world {args.world}: no {needed.name}/ in it (expected a shapes cache; run `make demo`)")
    result = judged(args.world, args.checkpoint, args.vocabulary, args.prompts, args.threads, args.copy_row)
    report = "\n".join(
        [
            "## shapes_words: adherence per word after stage 3",
            "",
            f"world {args.world}, checkpoint {args.checkpoint}"
            + (f" with rows copied ({', '.join(args.copy_row)})" if args.copy_row else "")
            + f"; {args.prompts} {args.vocabulary}-vocabulary prompts "
            "per template set, prompt i seed i; [low, high]: 95% interval; seen instead: the judge's other answers",
            "",
            words_table(result, args.vocabulary),
        ]
    )
    print(report)
    for path in write_results(args.name, report, result, out_dir=args.out):
        print(f"written: {path}")


if __name__ == "__main__":
    main()
