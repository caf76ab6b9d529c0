"""Serve the web app: the page, a jobs API with live progress, previews and cancel, and sync `POST /generate`.

python app.py                                        # SD1.5 as is, http://127.0.0.1:5000 (waitress)
python app.py checkpoint=outputs/DATE/TIME/checkpoints/last.ckpt   # or .../final_model
python app.py model=tiny port=5001                   # offline tiny random model
LDM_APP_TOKEN=SECRET python app.py checkpoint=PATH host=0.0.0.0 allowed_hosts='[myhost.lan]'   # the network
curl -s -X POST localhost:5000/jobs -H 'X-Owner-Token: MY-OWN-SECRET-1234' -H 'Content-Type: application/json' \
     -d '{"prompt": "A dog", "steps": 20}'
curl -s -H 'X-Owner-Token: MY-OWN-SECRET-1234' localhost:5000/jobs/ID       # also .../events, DELETE
curl -s -o out.png -X POST localhost:5000/generate -H 'Content-Type: application/json' -d '{"prompt": "A dog"}'
"""

import sys
from functools import partial

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.generation.loading import base_chosen_on_command_line, load_for_inference
from ldm.serving.auth import check_exposure
from ldm.serving.configure import app_from_config
from ldm.serving.server import check_server, serve

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    try:
        check_server(cfg.server, cfg.server_threads, cfg.limits.streams, cfg.queue_size)
        check_exposure(cfg.host, cfg.auth.token, cfg.auth.open)
        app = app_from_config(cfg)  # no model yet: the server listens while it loads
        attach = app.extensions["ldm_attach"]
        load = partial(load_for_inference, cfg, base_override=base_chosen_on_command_line())
        serve(app, cfg.host, cfg.port, cfg.server, cfg.server_threads, lambda: attach(load()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
