"""``tools/test.py --tta``: test-time augmentation with each library's own defaults."""
import copy

from mmengine.config import Config, ConfigDict

from .errors import UsageError


def _flip_tta(last: dict) -> dict:
    return dict(type='TestTimeAug', transforms=[
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [last]])


def apply_tta(cfg: Config, scope: str, draw: bool = False) -> None:
    """``--tta``: wrap the model in ``tta_model`` and test with ``tta_pipeline``, with
    the defaults of each library's own ``tools/test.py`` (mmpretrain and mmdet: flip;
    mmseg has none, its ADE20K base config defines both). ``draw``: predictions are
    drawn (``--show`` / ``--show-dir``)."""
    if scope == 'mmpretrain' and draw:
        # Its VisualizationHook expects one image tensor per batch and fails mid-run
        # ("'tuple' object has no attribute 'permute'") on the augmented views.
        raise UsageError("--tta with --show/--show-dir: mmpretrain's VisualizationHook "
                         'cannot draw test-time-augmented batches. Draw the predictions '
                         'in a run without --tta.')
    test_ds = cfg.test_dataloader.dataset
    while 'dataset' in test_ds:  # the pipeline sits on the innermost data set
        test_ds = test_ds['dataset']
    if scope == 'mmpretrain':
        cfg.setdefault('tta_model', dict(type='mmpretrain.AverageClsScoreTTA'))
        if 'tta_pipeline' not in cfg:
            cfg.tta_pipeline = copy.deepcopy(test_ds.pipeline)
            cfg.tta_pipeline[-1] = _flip_tta(cfg.tta_pipeline[-1])
    elif scope == 'mmdet':
        if cfg.model.get('roi_head', {}).get('mask_head') is not None:
            # DetTTAModel asserts this mid-run, after the model and data are built.
            raise UsageError("--tta: mmdet's DetTTAModel merges boxes only; it does not "
                             'support instance segmentation (Mask R-CNN). Test without --tta.')
        cfg.setdefault('tta_model', dict(type='DetTTAModel', tta_cfg=dict(
            nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
        if 'tta_pipeline' not in cfg:
            cfg.tta_pipeline = copy.deepcopy(test_ds.pipeline)
            # DetTTAModel un-flips the boxes: the packed meta must say whether they were.
            cfg.tta_pipeline[-1] = _flip_tta(dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                'flip_direction')))
    missing = [key for key in ('tta_model', 'tta_pipeline') if cfg.get(key) is None]
    if missing:
        raise UsageError(f'--tta: the config defines no {" / ".join(missing)}. Inherit them '
                         f"(mmseg::_base_/datasets/ade20k.py and mmseg::_base_/default_runtime.py "
                         f'define both) or test without --tta.')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    test_ds.pipeline = cfg.tta_pipeline
