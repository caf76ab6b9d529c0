"""conf/app.yaml -> the app: every value checked first, so a bad one is one line naming it, not a traceback.

Why apart from the routes (app.py): the routes take plain values (tests build apps with their own bounds
and hooks); only this reads the YAML.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Flask
from omegaconf import DictConfig, OmegaConf

from ldm.errors import ConfigError, SamplingError, expect, is_int
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.serving.app import create_app
from ldm.serving.hosts import HostAllowList
from ldm.training.module import TextEncoderFineTuner


def app_from_config(cfg: DictConfig, model: TextEncoderFineTuner | None = None, **overrides: object) -> Flask:
    """The app conf/app.yaml describes (`overrides`: a test's hooks and bounds), its values checked first."""
    limits = OmegaConf.to_container(cfg.limits, resolve=True)
    max_seconds = limits.pop("max_seconds", None)
    streams = limits.pop("streams")
    counts = {"queue_size": 1, "preview_every": 0, "jobs.keep_count": 0, "max_request_bytes": 1, "limits.streams": 1}
    for key, low in counts.items():
        value = OmegaConf.select(cfg, key)
        expect(is_int(value) and value >= low, key, value, f"an integer ≥ {low}", ConfigError)
    for key in ("jobs.keep_s", "jobs.prune_every_s"):
        value = OmegaConf.select(cfg, key)
        expect(isinstance(value, int | float) and value > 0, key, value, "seconds > 0", ConfigError)
    ok = max_seconds is None or (isinstance(max_seconds, int | float) and max_seconds > 0)
    expect(ok, "limits.max_seconds", max_seconds, "null (no bound) or seconds > 0")
    hosts = OmegaConf.to_container(cfg.allowed_hosts, resolve=True)
    names_ok = isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)
    expect(names_ok, "allowed_hosts", hosts, "a list of host names such as [myhost.lan, '192.168.1.5:5000']")
    options = {
        "queue_size": cfg.queue_size,
        "retry_after": cfg.retry_after,
        "checkpoint": cfg.checkpoint,
        "max_seconds": max_seconds,
        "preview_every": cfg.preview_every,
        "keep_s": cfg.jobs.keep_s,
        "keep_count": cfg.jobs.keep_count,
        "prune_every_s": cfg.jobs.prune_every_s,
        "max_request_bytes": cfg.max_request_bytes,
        "streams": streams,
        "hosts": HostAllowList(cfg.host, cfg.port, hosts),
        "token": cfg.auth.token,
        "out_dir": cfg.out_dir if cfg.keep_images else None,
    }
    defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
    check_defaults(defaults, Limits(**limits))
    return create_app(model, defaults, Limits(**limits), **{**options, **overrides})


def check_defaults(defaults: SampleSettings, limits: Limits) -> None:
    """The request defaults (conf/sampling/) within `limits`. Why: otherwise every request that leaves a
    field out is a 400 about a value it never sent (the fuzz test met `steps=15: expected at most 2`)."""
    try:
        validate_settings(replace(defaults, prompts=("a default",)), limits)
    except SamplingError as err:
        raise ConfigError(f"a request default (conf/sampling/) is outside limits: {err}") from None
