"""Inference on image files through the libraries' own inferencers
(``tools/infer.py``).

Drawing, pre-processing and the result formats are the libraries':
``mmpretrain.apis.ImageClassificationInferencer``, ``mmseg.apis.MMSegInferencer`` and
``mmdet.apis.DetInferencer``, chosen by the config's ``default_scope``. What this
module adds is what they do not do:

* **Strict, safe loading.** The inferencers load a checkpoint with mmengine's
  non-strict ``load_checkpoint``: a checkpoint of another variant runs with a
  warning and random weights. Here the model is built and loaded by
  :mod:`s2aformer_mm` (keys and shapes checked, ``weights_only`` allowlist) and
  handed to the inferencer already built, which also lets a deploy-form checkpoint
  (``tools/deployment/fuse_checkpoint.py``) run, whose parameter names no config
  describes. mmpretrain's inferencer takes a built model as its ``model``; mmseg's
  and mmdet's (mmengine ``BaseInferencer``) only take a config, so
  :func:`prebuilt_model_inferencer` overrides their model factory, ``_init_model``.
* **Class names without a trained checkpoint.** Untrained or hand-made checkpoints
  carry no ``meta.dataset_meta``; mmseg would then draw with Cityscapes' 19 classes
  (an ADE20K model predicts 150) and mmdet with COCO's. As mmpretrain's
  ``get_model`` does, the names then come from the config's test dataset class.
* **Up-front input checks** with one-line errors (:mod:`s2aformer_mm.engine.errors`)
  before anything is written, and one output layout for the three libraries:
  ``OUT/vis/`` (the library's drawings) and ``OUT/preds/<image stem>.json`` (or
  ``.png`` of class indices for segmentation).
"""
import importlib
import json
import os
import os.path as osp
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch.nn as nn
from mmengine.config import Config
from mmengine.device import get_device
from PIL import Image

from ..checkpoint import (check_state_dict, checkpoint_state_dict, is_deploy_checkpoint,
                          safe_load)
from ..engine.config import load_config
from ..engine.errors import InputNotFoundError, UsageError
from ..models import switch_to_deploy
from .model import build_model_from_config, load_deploy_model

__all__ = ['IMAGE_EXTENSIONS', 'collect_images', 'load_inference_model',
           'prebuilt_model_inferencer', 'build_inferencer', 'infer_images']

#: the suffixes a folder is searched for (the list mmdet's ``DetInferencer`` uses)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def collect_images(inputs: Sequence[str]) -> List[str]:
    """The image files named by ``inputs`` (files, and folders searched one level
    deep for :data:`IMAGE_EXTENSIONS`, in sorted order), each checked to decode.

    Every image is decoded once here (with mmcv, as the pipelines read them) so that
    a bad file stops the run before any output is written, with a one-line error;
    inside the libraries it stops the run with a traceback (mmseg:
    ``AssertionError: failed to load image``) midway through the inputs. A file named
    explicitly must be an image whatever its suffix; other files in a folder are
    skipped, as the libraries do. Outputs are named after the image's stem, so two
    inputs with the same stem are refused rather than overwriting each other.
    """
    if not inputs:
        raise UsageError('no input images: name image files and/or folders.')
    images = []
    for path in inputs:
        if osp.isdir(path):
            found = sorted(osp.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(IMAGE_EXTENSIONS)
                           and osp.isfile(osp.join(path, name)))
            if not found:
                raise InputNotFoundError(
                    f'Folder {path!r} holds no image (looked for '
                    f'{", ".join(IMAGE_EXTENSIONS)} files, not in sub-folders).')
            images += found
        elif osp.isfile(path):
            images.append(path)
        else:
            raise InputNotFoundError(f'Input {path!r} does not exist (expected an image file or '
                                     'a folder of images).')
    for path in images:
        _check_decodes(path)
    stems: Dict[str, str] = {}
    for path in images:
        stem = osp.splitext(osp.basename(path))[0]
        if stem in stems:
            raise UsageError(f'Inputs {stems[stem]!r} and {path!r} would write the same output '
                             f'files ({stem}.*); rename one or run them separately.')
        stems[stem] = path
    return images


def _check_decodes(path: str) -> None:
    try:
        size = os.path.getsize(path)
        img = mmcv.imread(path) if size else None
    except Exception as e:  # OSError when unreadable, cv2.error
        raise UsageError(f'Cannot read image {path!r}: {e}') from None
    if img is None:
        what = 'an empty file' if size == 0 else f'a {size}-byte file'
        raise UsageError(f'{path!r} is not an image that OpenCV can decode ({what}); pass '
                         'JPEG, PNG, BMP, TIFF or WebP images.')


def _dataset_meta(cfg: Config, scope: str, checkpoint_meta: Optional[dict]) -> dict:
    """What the inferencer draws with: the checkpoint's ``dataset_meta`` (the Runner
    saves it), else the ``METAINFO`` of the config's test dataset class (the fallback
    of mmpretrain's ``get_model``; the data need not exist), in the form each
    library's own checkpoint loading gives it: mmseg keeps only ``classes`` and
    ``palette`` (its visualizer takes no other key), mmdet lower-cases the keys and
    draws with random colours when there is no palette."""
    if isinstance(checkpoint_meta, dict) and checkpoint_meta.get('dataset_meta'):
        meta = dict(checkpoint_meta['dataset_meta'])
    else:
        datasets = importlib.import_module(f'{scope}.registry').DATASETS
        dataset = cfg.get('test_dataloader', {}).get('dataset', {})
        cls = datasets.get(dataset['type']) if dataset.get('type') else None
        meta = dict(getattr(cls, 'METAINFO', None) or {})
        meta.update(dataset.get('metainfo') or {})
    if scope == 'mmseg':
        meta = {k: meta.get(k) for k in ('classes', 'palette')}
    elif scope == 'mmdet':
        meta = {k.lower(): v for k, v in meta.items()}
        meta.setdefault('palette', 'random')
    return meta


def load_inference_model(config: str, checkpoint: str, cfg_options: Optional[dict] = None
                         ) -> Tuple[nn.Module, Config, str]:
    """Build ``config``'s model and load ``checkpoint`` strictly; returns
    ``(model, cfg, scope)``, the model in eval mode with ``cfg`` and ``dataset_meta``.

    A training-form checkpoint (a Runner's ``iter_N.pth`` / ``epoch_N.pth``, or a bare
    state dict) must hold exactly the model's keys and shapes
    (:func:`~s2aformer_mm.checkpoint.check_model_checkpoint`); a deploy-form one is
    loaded into the deploy form (:func:`~s2aformer_mm.apis.load_deploy_model`).
    Anything else raises an error of :data:`~s2aformer_mm.engine.errors.USER_ERRORS`
    naming the file: missing, not a checkpoint, unsafe, corrupt, another variant.
    """
    cfg, scope = load_config(config, cfg_options, 'none', None)
    ckpt = safe_load(checkpoint)  # missing, not a checkpoint, unsafe, corrupt: named here
    deploy, meta = is_deploy_checkpoint(ckpt), ckpt.get('meta') if isinstance(ckpt, dict) else None
    del ckpt  # the loaders below read the file again; do not hold two copies
    if deploy:
        model = _load_deploy(cfg, checkpoint)
    else:
        model = build_model_from_config(cfg)
        state = checkpoint_state_dict(checkpoint)
        check_state_dict(model, state, checkpoint)  # what check_model_checkpoint does
        model.load_state_dict(state, strict=True)
        model.cfg = cfg
    model.dataset_meta = _dataset_meta(cfg, scope, meta)
    return model.eval(), cfg, scope


def _load_deploy(cfg: Config, checkpoint: str) -> nn.Module:
    try:
        return load_deploy_model(cfg, checkpoint)
    except RuntimeError:  # torch's strict load_state_dict: its message lists every key
        deploy = switch_to_deploy(build_model_from_config(cfg))
        check_state_dict(deploy, safe_load(checkpoint)['state_dict'], checkpoint,
                         what='the deploy form of this model',
                         hint='  Was it fused from a checkpoint of this config (same model and '
                              'variant)? Pass the config it was made with.')
        raise


def prebuilt_model_inferencer(base: type) -> type:
    """A subclass of mmengine-based inferencer ``base`` (``MMSegInferencer``,
    ``DetInferencer``) whose ``model`` is an already built and loaded module.

    Their constructors take a config and build and load the model in
    ``BaseInferencer._init_model``; everything else (pipeline from the config's test
    pipeline, visualizer, drawing, result formats) reads ``self.model`` and the
    config. Overriding only ``_init_model`` keeps all of that the library's. The
    class is created per library because the library is imported only when used.
    """

    class PrebuiltModelInferencer(base):
        def __init__(self, model: nn.Module, cfg: Config, **kwargs):
            self._prebuilt_model = model
            super().__init__(model=cfg, weights=None, **kwargs)

        def _init_model(self, cfg, weights, device='cpu'):
            model, self._prebuilt_model = self._prebuilt_model, None
            model.cfg = cfg
            return model.to(device).eval()

    PrebuiltModelInferencer.__name__ = PrebuiltModelInferencer.__qualname__ = \
        f'Prebuilt{base.__name__}'
    return PrebuiltModelInferencer


def build_inferencer(model: nn.Module, cfg: Config, scope: str, device: Optional[str] = None):
    """The library's inferencer for ``scope`` around ``model`` (from
    :func:`load_inference_model`), on ``device`` (default: CUDA if available)."""
    device = device or get_device()
    if scope == 'mmpretrain':
        from mmpretrain.apis import ImageClassificationInferencer
        # What mmpretrain's get_model attaches to the models it builds.
        model._config, model._dataset_meta = cfg, model.dataset_meta
        return ImageClassificationInferencer(model, pretrained=False, device=device)
    if scope == 'mmseg':
        from mmseg.apis import MMSegInferencer
        return prebuilt_model_inferencer(MMSegInferencer)(model, cfg, device=device)
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        return prebuilt_model_inferencer(DetInferencer)(model, cfg, device=device)
    raise UsageError(f'no inferencer for default_scope={scope!r} '
                     '(mmpretrain, mmseg or mmdet)')


def infer_images(inferencer, scope: str, images: List[str], out_dir: str, show: bool = False,
                 score_thr: float = 0.3) -> List[Dict[str, str]]:
    """Run ``inferencer`` on ``images`` and write, per image, the library's drawing
    to ``out_dir/vis/`` and the result to ``out_dir/preds/<stem>``:

    * classification: ``.json`` with ``pred_label``, ``pred_score``, ``pred_class``
      and ``pred_scores`` (every class), as ``ImageClassificationInferencer``
      returns them;
    * segmentation: ``.png`` of class indices (0 = the model's first class; 8-bit,
      16-bit above 256 classes), the size of the image;
    * detection / instance segmentation: ``.json`` as ``DetInferencer`` writes it
      (``labels``, ``scores``, ``bboxes`` in pixels ``x1, y1, x2, y2``, and RLE
      ``masks``), with every detection the model keeps (its ``test_cfg``);
      ``score_thr`` only decides which ones are drawn, as in mmdet.

    Returns one ``{'image', 'vis', 'pred'}`` dict of paths per image.
    """
    vis_dir, pred_dir = osp.join(out_dir, 'vis'), osp.join(out_dir, 'preds')
    os.makedirs(vis_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    stems = [osp.splitext(osp.basename(p))[0] for p in images]
    if scope == 'mmpretrain':
        results = inferencer(images, show=show, show_dir=vis_dir)
        # where ImageClassificationInferencer.visualize saves (Path.with_suffix)
        vis = [str((Path(vis_dir) / Path(p).stem).with_suffix('.png')) for p in images]
        preds = [osp.join(pred_dir, f'{s}.json') for s in stems]
        for result, pred in zip(results, preds):
            result = {**{k: v for k, v in result.items() if k != 'pred_scores'},
                      'pred_scores': np.asarray(result['pred_scores']).tolist()}
            with open(pred, 'w') as f:
                json.dump(result, f)
    elif scope == 'mmseg':
        samples = inferencer(images, out_dir=out_dir, img_out_dir='vis', show=show,
                             return_datasamples=True)
        samples = samples if isinstance(samples, list) else [samples]
        vis = [osp.join(vis_dir, osp.basename(p)) for p in images]
        preds = [osp.join(pred_dir, f'{s}.png') for s in stems]
        for sample, pred in zip(samples, preds):
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            dtype = np.uint8 if len(inferencer.model.dataset_meta['classes']) <= 256 else np.uint16
            Image.fromarray(labels.astype(dtype)).save(pred)
    elif scope == 'mmdet':
        inferencer(images, out_dir=out_dir, show=show, pred_score_thr=score_thr,
                   no_save_pred=False)
        vis = [osp.join(vis_dir, osp.basename(p)) for p in images]
        preds = [osp.join(pred_dir, f'{s}.json') for s in stems]
    else:
        raise UsageError(f'no inferencer for default_scope={scope!r}')
    return [dict(image=i, vis=v, pred=p) for i, v, p in zip(images, vis, preds)]
