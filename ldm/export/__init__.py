"""What a run trained, in the files the Stable Diffusion tools load: the single-file checkpoint (CompVis
layout), the text encoder alone, kohya LoRA, a diffusers folder and the model card.

Why a package of its own: train.py's final export and `python -m ldm.export` write the same files through
the same functions, and generation code never needs them.
"""
