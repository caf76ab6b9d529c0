"""Compare a fine-tuned text encoder with the base model's own on held-out captions: CLIP score with two
backbones, FID against the real images, prompt-embedding drift (and adherence on the shapes world).

python evaluate.py checkpoint=outputs/DATE/TIME/checkpoints/last.ckpt          # Flickr8k test split, 100 captions
python evaluate.py checkpoint=outputs/DATE/TIME/final_model prompts.count=500 device=cuda
python evaluate.py checkpoint=PATH data.root=/data/flickr8k steps=30 scheduler=euler_a seed=7
python evaluate.py checkpoint=PATH backbones.laion_b32=/models/clip-b32 fid.inception_weights=/models/pt_inception.pth
python evaluate.py checkpoint=PATH backbones=tiny data.root=.cache/data/tiny-flickr8k    # offline, tiny run
python evaluate.py checkpoint=PATH data=shapes data.vocabulary=new judge='${paths.shapes_dir}/judge'   # shapes world
Writes eval.json and eval_grid.png into the checkpoint's run folder (out_dir=... elsewhere) and prints a table.
"""

import sys

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.evaluation.backbones import register_resolvers as register_backbone_resolvers
from ldm.evaluation.run import evaluate
from ldm.generation.loading import base_chosen_on_command_line

register_resolvers()
register_backbone_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg, base_override=base_chosen_on_command_line())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"\n{report['table']}")
    for path in report["files"].values():
        print(path)


if __name__ == "__main__":
    main()
