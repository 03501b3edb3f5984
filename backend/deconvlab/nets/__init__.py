"""Architectures (as data), their builders and the model registry."""

from .registry import (ARCHS, DEFAULT_MODEL, ModelMeta, build, layer_map, load_checkpoint, model_names,
                       models_dir, read_registry, register_arch, resolve, save_checkpoint)
from .zfnet import ZFNetConfig, feature_sizes, fold_batchnorm, he_init, zfnet

__all__ = ["ARCHS", "DEFAULT_MODEL", "ModelMeta", "ZFNetConfig", "build", "feature_sizes", "layer_map",
           "fold_batchnorm", "he_init", "load_checkpoint", "model_names", "models_dir", "read_registry",
           "register_arch", "resolve", "save_checkpoint", "zfnet"]
