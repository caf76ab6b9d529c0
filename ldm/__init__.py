"""Fine-tune SD1.5's CLIP text encoder (VAE and U-Net frozen) and generate on a CPU."""

from ldm.console import quiet_third_party

quiet_third_party()  # before transformers, diffusers or Lightning print their first banner
