"""Captioned-image data: Flickr8k (original | kaggle | hub layouts) and a generated stand-in."""

from ldm.data.datamodule import Flickr8kDataModule
from ldm.data.synthetic import write_captioned_images

__all__ = ["Flickr8kDataModule", "write_captioned_images"]
