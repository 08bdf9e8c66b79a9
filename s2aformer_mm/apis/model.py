"""Build a config's model in its library, and load a deploy-form checkpoint."""
import importlib
import os
import os.path as osp
from typing import Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import set_random_seed

from ..checkpoint import is_deploy_checkpoint, safe_load
from ..integrations import require
from ..models import switch_to_deploy

__all__ = ['build_model_from_config', 'load_deploy_model', 'save_initial_checkpoint']


def build_model_from_config(config) -> nn.Module:
    """Build ``cfg.model`` (a path or an mmengine ``Config``) in the config's
    ``default_scope`` (mmpretrain / mmseg / mmdet); training form, eval mode."""
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    scope = cfg.get('default_scope')
    if scope is None:
        raise ValueError('the config has no default_scope (mmpretrain, mmseg or mmdet)')
    require(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = cfg.model.copy()
    if scope == 'mmseg':
        model_cfg.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(model_cfg)
    return model.eval()


def load_deploy_model(config, checkpoint: str) -> nn.Module:
    """Build ``config``'s model, switch it to the deploy form and load a deploy
    checkpoint written by ``tools/deployment/fuse_checkpoint.py`` (strict).

    Like the libraries' ``init_model`` / ``init_detector``, the model carries ``cfg``
    and the checkpoint's ``dataset_meta``, so mmseg's ``inference_model`` and mmdet's
    ``inference_detector`` accept it."""
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model = switch_to_deploy(build_model_from_config(cfg))
    ckpt = safe_load(checkpoint)
    if not is_deploy_checkpoint(ckpt):
        raise ValueError(f'{checkpoint} is not a deploy-form checkpoint (no '
                         'meta.s2aformer_deploy); load it into the training-form model and call '
                         'switch_to_deploy().')
    model.load_state_dict(ckpt['state_dict'], strict=True)
    model.cfg = cfg
    if ckpt['meta'].get('dataset_meta') is not None:
        model.dataset_meta = ckpt['meta']['dataset_meta']
    return model


def save_initial_checkpoint(config: str, out: str, cfg_options: Optional[dict] = None,
                            seed: int = 0) -> str:
    """Save the weights a training run with ``seed`` starts from (``init_weights``), e.g.
    to evaluate the untrained model with ``tools/test.py`` as a baseline; returns ``out``."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    set_random_seed(seed)
    model = build_model_from_config(cfg)
    model.init_weights()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    torch.save(dict(meta=dict(iter=0, epoch=0, seed=seed), state_dict=model.state_dict()), out)
    return out
