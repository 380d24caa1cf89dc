"""Weights of other MobileViT ports (timm, Hugging Face, ml-cvnets) in this project's layout."""

from mobilevit.convert.state_dict import SOURCES, convert_state_dict, detect_source

__all__ = ["SOURCES", "convert_state_dict", "detect_source"]
