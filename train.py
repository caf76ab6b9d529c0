"""Fine-tune the text encoder of Stable Diffusion v1.5 (VAE and U-Net frozen) with Lightning + Hydra.

python train.py                                   # SD1.5 + Flickr8k (data.root=PATH)
python train.py trainer.max_epochs=9 optimizer.lr=3e-5 data.batch_size=8 trainer.accumulate_grad_batches=4
python train.py experiment=tiny                   # seconds, offline: tiny random model on generated data
python train.py experiment=shapes                 # the offline shapes world's mission (python demo.py runs all stages)
python train.py -m experiment=tiny optimizer.lr=1e-5,3e-5   # sweep, one folder per run
python train.py ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt   # resume (or a run folder, or `last`)
python train.py ckpt_path=last                     # resume the newest outputs/**/checkpoints/last.ckpt
python train.py -m hparams_search=lr_optuna       # Optuna sweep over lr, caption dropout, accumulation
tensorboard --logdir outputs
"""

import sys

import hydra
from omegaconf import DictConfig

from ldm.config import register_resolvers
from ldm.errors import UserError
from ldm.training.run import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Return val/loss so Hydra sweepers (e.g. Optuna) can optimise it."""
    try:
        trainer, _ = train(cfg)
    except UserError as error:
        sys.exit(f"error: {error}")  # one line, no traceback: the message says what to change
    val_loss = trainer.callback_metrics.get("val/loss")
    return None if val_loss is None else float(val_loss)


if __name__ == "__main__":
    main()
