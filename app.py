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
from functools import partial

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.generation.loading import base_chosen_on_command_line, load_for_inference
from ldm.serving.app import app_from_config
from ldm.serving.server import check_server, serve

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    try:
        check_server(cfg.server, cfg.server_threads)
        app = app_from_config(cfg)  # no model yet: the server listens while it loads
        attach = app.extensions["ldm_attach"]
        load = partial(load_for_inference, cfg, base_override=base_chosen_on_command_line())
        serve(app, cfg.host, cfg.port, cfg.server, cfg.server_threads, lambda: attach(load()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
