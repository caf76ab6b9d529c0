"""Training: the LightningModule (frozen VAE and U-Net, trainable text encoder), its callbacks, precision,
faults, resume and checkpoint IO, and `train(cfg)` (run.py)."""
