"""Generate images from prompts with Stable Diffusion v1.5 and a fine-tuned text encoder, on CPU by default.

python sample.py prompt="A dog running on the beach at sunset"            # SD1.5 as is
python sample.py prompt="A dog running on the beach" checkpoint=outputs/DATE/TIME/checkpoints/last.ckpt
python sample.py prompt="..." checkpoint=outputs/DATE/TIME/final_model     # or final_model/final_weights.safetensors
python sample.py prompt="..." checkpoint=PATH model.pretrained=/models/sd15   # another copy of the base
python sample.py prompts_file=prompts.txt num_images=4 seed=7 steps=30 scheduler=euler_a
python sample.py prompt='"a dog, running"'                                 # quote a prompt that has commas
python sample.py model=tiny prompt="a red circle" steps=4                  # offline tiny random model
python sample.py device=cuda prompt="..."                                  # fp16 on a GPU
python sample.py prompt="..." preview_every=3      # also out_dir/preview-imageKK-stepNNN.png every 3 steps
"""

import sys

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.generation.loading import base_chosen_on_command_line, load_for_inference
from ldm.generation.output import save_images
from ldm.generation.pipeline import generate
from ldm.generation.preview import latent_preview_for
from ldm.generation.progress import RunProgress, check_preview_every, step_callback
from ldm.generation.settings import Limits, SampleSettings, read_prompts, validate_settings

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        settings = SampleSettings.from_config(cfg, read_prompts(cfg.prompt, cfg.prompts_file))
        validate_settings(settings, Limits(**cfg.limits))  # before any model loads
        check_preview_every(cfg.preview_every)
        model = load_for_inference(cfg, base_override=base_chosen_on_command_line())
        preview = latent_preview_for(model) if cfg.preview_every else None
        count = len(settings.prompts) * settings.num_images
        watch = RunProgress(
            count, settings.batch_size, preview=preview, preview_every=cfg.preview_every, out_dir=cfg.out_dir
        )
        # one run, so each model is freed once its stage is done: the peak RSS is the U-Net's, not all three's
        images = generate(model, settings, checkpoint=cfg.checkpoint, on_step=step_callback(watch), release_models=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in save_images(images, cfg.out_dir):
        print(path)


if __name__ == "__main__":
    main()
