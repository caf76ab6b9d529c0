"""Captioned-image data: Flickr8k (original | kaggle | hub layouts), a generated stand-in, and the latent cache."""
