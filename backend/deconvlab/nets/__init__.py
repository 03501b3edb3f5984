"""Architectures (as data), their builders and the model registry."""

from .registry import (ARCHS, DEFAULT_MODEL, ModelMeta, build, layer_map, load_checkpoint, model_names,
                       models_dir, read_registry, register_arch, resolve, save_checkpoint)
from .checks import check_module
from .program import audit_pt2, load_program
from .torchvision_any import classification_models, load_torchvision, load_torchvision_model
from .user_models import register
from .weights import read_state_dict
from .zfnet import ZFNetConfig, feature_sizes, fold_batchnorm, he_init, zfnet

__all__ = ["ARCHS", "DEFAULT_MODEL", "ModelMeta", "ZFNetConfig", "build", "feature_sizes", "layer_map",
           "audit_pt2", "check_module", "classification_models", "load_program", "load_torchvision",
           "load_torchvision_model", "read_state_dict", "register",
           "fold_batchnorm", "he_init", "load_checkpoint", "model_names", "models_dir", "read_registry",
           "register_arch", "resolve", "save_checkpoint", "zfnet"]
