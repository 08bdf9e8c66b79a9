"""Parameters and FLOPs (MACs) of a model built from any S2AFormer config.

Works for the classification (mmpretrain), segmentation (mmseg) and detection
(mmdet) configs, on CPU. The model is built under the config's
``default_scope`` and run on one random image; the whole network is counted
(backbone, neck and heads; for Mask R-CNN also the RPN proposals and RoI heads).
Default input (H W): 224 224 for classification, 512 512 for segmentation,
800 1280 for detection (the paper's "800 x 1280"). Two-stage detectors are
counted on the proposals their untrained RPN produces for a random image, so
their RoI-head share is indicative only (the paper publishes no Mask R-CNN FLOPs).

MACs are printed in three conventions (``--conventions``; 1 MAC = one
multiply-add, what the paper and OpenMMLab tools call a FLOP):

* honest -- fvcore-style tracing (mmengine ``FlopAnalyzer``) with the attention
  matmuls counted;
* paper -- the convention of the paper's classification Tables II/III: the same
  without the two attention matmuls, plus element-wise ops;
* mmcv -- mmcv 1.x ``get_model_complexity_info`` (module hooks, no functional
  ops): the convention of the paper's dense Tables IV/VI/VII.

Unmodified configs are checked against the published figures (docs/architecture.md).

    python tools/analysis/get_flops.py configs/mmseg/fpn_s2aformer_s_ade20k.py
    # another variant in a dense config: the neck's in_channels must be its stage widths
    python tools/analysis/get_flops.py configs/mmseg/fpn_s2aformer_mini_ade20k.py \
        --shape 640 640 --cfg-options model.backbone.arch=t "model.neck.in_channels=[48,64,128,256]"
"""
import argparse
import importlib
import os.path as osp
import time

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import s2aformer_mm
from s2aformer_mm.complexity import (DENSE_REFERENCE, REFERENCE, model_complexity,
                                     within_reference)
from s2aformer_mm.models.s2aformer import MIN_INPUT_SIZE

DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmseg': (512, 512), 'mmdet': (800, 1280)}
CONVENTIONS = {
    'honest': 'honest (fvcore, attention matmuls counted)',
    'paper': 'paper  (paper Tables II/III, classification: no attention matmuls, + element-wise)',
    'mmcv': 'mmcv   (paper Tables IV/VI/VII, dense: mmcv 1.x hooks, no functional ops)',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    defaults = ', '.join(f'{h} {w} for {s}' for s, (h, w) in DEFAULT_SHAPES.items())
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help=f'input height and width, at least {MIN_INPUT_SIZE} '
                        f'(default: {defaults} configs)')
    parser.add_argument('--conventions', nargs='+', choices=list(CONVENTIONS),
                        default=list(CONVENTIONS),
                        help='MAC conventions to compute (default: all): ' + '; '.join(
                            ' '.join(v.split()) for v in CONVENTIONS.values()))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in the train tools')
    args = parser.parse_args(argv)
    if args.shape and min(args.shape) < MIN_INPUT_SIZE:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: S2AFormer needs inputs of at '
                     f'least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (its total stride)')
    return args


def build_model(cfg: Config):
    """Build ``cfg.model`` in the registry of the config's default scope."""
    scope = cfg.get('default_scope')
    if scope not in DEFAULT_SHAPES:
        raise ValueError(f'{cfg.filename}: default_scope {scope!r} is not one of '
                         f'{sorted(DEFAULT_SHAPES)}; inherit the library runtime base.')
    s2aformer_mm.require(scope)
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    return registry.build(cfg.model), scope


def reference_for(cfg: Config, shape):
    """Published figures for this config at this shape, if any (params M, GMACs)."""
    name = osp.splitext(osp.basename(cfg.filename))[0]
    ref = DENSE_REFERENCE.get(name)
    if ref is not None:
        return (ref['params'], ref['gflops'] if tuple(shape) == ref['shape'] else None,
                'mmcv', ref['unit'])
    arch = cfg.model.get('backbone', {}).get('arch')
    if cfg.get('default_scope') == 'mmpretrain' and arch in REFERENCE:
        ref = REFERENCE[arch]
        macs = ref['gmacs_paper'] if tuple(shape) == (224, 224) else None
        # Table II states GMACs to 0.01 (0.43 ... 4.12); params are compared to 0.001 M.
        return ref['params'], macs, 'paper', dict(params=0.001, gflops=0.01)
    return None


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model, scope = build_model(cfg)
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPES[scope]

    start = time.time()
    result = model_complexity(model, shape, args.conventions)
    backbone_params = sum(p.numel() for p in model.backbone.parameters())

    print(f'config:   {args.config}')
    print(f'model:    {type(model).__name__} ({scope}), input 1x3x{shape[0]}x{shape[1]} (HxW)')
    print(f'params:   {result["params"] / 1e6:.3f} M  (backbone {backbone_params / 1e6:.3f} M)')
    for conv in args.conventions:
        print(f'GMACs:    {result[conv] / 1e9:8.3f}  {CONVENTIONS[conv]}')
    task, paper_conv = ('classification', 'paper') if scope == 'mmpretrain' else ('dense', 'mmcv')
    print(f"The paper's {task} figures use the {paper_conv!r} convention.")
    # Published figures only describe the unmodified configs.
    ref = None if args.cfg_options else reference_for(cfg, shape)
    if ref is not None:
        params, gmacs, conv, unit = ref
        ok = within_reference(result['params'] / 1e6, params, unit['params'])
        line = f'reference (docs/architecture.md): {params} M params [{"ok" if ok else "MISMATCH"}]'
        if gmacs is not None and conv in result:
            ok = within_reference(result[conv] / 1e9, gmacs, unit['gflops'])
            line += f', {gmacs} GMACs ({conv!r} convention) [{"ok" if ok else "MISMATCH"}]'
        print(line)
    print(f'({time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
