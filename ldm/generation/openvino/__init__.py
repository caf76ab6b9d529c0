"""An OpenVINO engine for the frozen U-Net and VAE decoder, converted once per base model and cached.

Why: fine-tuning here changes only the text encoder, so the U-Net and VAE (99% of a generation's cost) are
the base model's, bit for bit, for every checkpoint. They are converted to OpenVINO once, keyed by a
fingerprint of their weights, and every fine-tuned text encoder reuses them. diffusers' own pipeline,
scheduler and loop still run; only the two modules' forward calls go to compiled OpenVINO models.

cache.py: the fingerprint, the cache entry, its checks and its build lock. export.py: torch -> OpenVINO IR
(+ nncf int8). calibration.py: the int8 calibration and what keys it. build.py: one model's entries and
their installation. choice.py: `engine.backend=auto`'s timed choice and its cache. runtime.py: the compiled
models behind the module interface diffusers calls.
"""
