"""Datasets, transforms and the multi-scale sampler."""

from mobilevit.data.sampler import MultiScaleBatchSampler

__all__ = ["MultiScaleBatchSampler"]
