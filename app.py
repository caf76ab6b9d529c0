"""Serve the web app: the page, a jobs API with live progress, previews and cancel, and sync `POST /generate`.

python app.py                                        # SD1.5 as is, http://127.0.0.1:5000 (waitress)
python app.py checkpoint=outputs/DATE/TIME/checkpoints/last.ckpt   # or .../final_model
python app.py model=tiny port=5001                   # offline tiny random model
python app.py checkpoint=PATH host=0.0.0.0 queue_size=8 limits.max_seconds=1200 server=dev
curl -s -X POST localhost:5000/jobs -H 'Content-Type: application/json' -d '{"prompt": "A dog", "steps": 20}'
curl -s localhost:5000/jobs/ID  ;  curl -N localhost:5000/jobs/ID/events  ;  curl -X DELETE localhost:5000/jobs/ID
curl -s -o out.png -X POST localhost:5000/generate -H 'Content-Type: application/json' -d '{"prompt": "A dog"}'
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.generation.loading import base_chosen_on_command_line, load_for_inference
from ldm.generation.settings import Limits, SampleSettings
from ldm.serving.app import create_app
from ldm.serving.server import check_server, serve

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    try:
        check_server(cfg.server, cfg.server_threads)
        defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
        limits = OmegaConf.to_container(cfg.limits)
        max_seconds = limits.pop("max_seconds")
        app = create_app(
            None,
            defaults,
            Limits(**limits),
            queue_size=cfg.queue_size,
            retry_after=cfg.retry_after,
            checkpoint=cfg.checkpoint,
            max_seconds=max_seconds,
            preview_every=cfg.preview_every,
            keep_s=cfg.jobs.keep_s,
            keep_count=cfg.jobs.keep_count,
            max_request_bytes=cfg.max_request_bytes,
        )
        load = lambda: app.extensions["ldm_attach"](load_for_inference(cfg, base_override=base_chosen_on_command_line()))  # noqa: E731
        serve(app, cfg.host, cfg.port, cfg.server, cfg.server_threads, load)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
