"""Serve the web app: a prompt page, `POST /generate` -> PNG, `GET /healthz`; model loaded once at start-up.

python app.py                                        # SD1.5 as is, http://127.0.0.1:5000
python app.py checkpoint=outputs/DATE/TIME/checkpoints/last.ckpt   # or .../final_model
python app.py model=tiny port=5001                   # offline tiny random model
python app.py checkpoint=PATH host=0.0.0.0 queue_size=8 attention_slicing=on
curl -s -o out.png -D - -X POST localhost:5000/generate -H 'Content-Type: application/json' \
     -d '{"prompt": "A dog running on the beach", "steps": 20, "seed": 7}'
curl -s localhost:5000/healthz
"""

import sys

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.generation.loading import base_chosen_on_command_line, load_for_inference
from ldm.generation.settings import Limits, SampleSettings
from ldm.serving.app import create_app

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    try:
        defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
        model = load_for_inference(cfg, base_override=base_chosen_on_command_line())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    app = create_app(
        model,
        defaults,
        Limits(**cfg.limits),
        queue_size=cfg.queue_size,
        retry_after=cfg.retry_after,
        checkpoint=cfg.checkpoint,
    )
    # threaded: /healthz and 503s answer while the one worker renders
    app.run(host=cfg.host, port=cfg.port, threaded=True)


if __name__ == "__main__":
    main()
