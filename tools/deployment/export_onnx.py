"""Export an S2AFormer backbone or classifier to ONNX and check it with ONNX Runtime.

    python tools/deployment/export_onnx.py OUT.onnx --arch t [--classifier] \
        [--checkpoint CKPT] [--shape 224 224] [--batch 1] [--no-deploy] [--static]

The model is switched to its deploy form first (BN folded, heads merged; see
``s2aformer_mm/models/reparam.py``) unless ``--no-deploy``. Batch, height and width are
dynamic axes unless ``--static``. After export the graph is run in ONNX Runtime at
the export size and at a second size/batch, and the max abs error against PyTorch
is printed; the script exits 1 if it exceeds ``--atol`` (default 1e-4).
The backbone graph returns the feature maps of ``--out-indices``; the classifier
graph returns logits (inputs normalised already: the data preprocessor is not
in the graph). Opset and limits: docs/deployment.md.

For a backbone, ``--checkpoint`` may be a classifier, Semantic FPN, RetinaNet or
Mask R-CNN checkpoint (its ``backbone.*`` weights are taken) or a bare backbone
state dict. The output norms of a dense model (``out_norm=True``: ``out_norm<i>``
layers) are exported when the checkpoint has them, and ``--out-indices`` then
defaults to their stages, i.e. the graph returns the features the neck received:

    python tools/deployment/export_onnx.py fpn_mini_backbone.onnx --arch mini \
        --checkpoint work_dirs/fpn_s2aformer_mini_ade20k/iter_40000.pth
"""
import argparse
import re
import sys
import time

import torch
from mmengine.registry import DefaultScope

import s2aformer_mm
from s2aformer_mm import S2AFormer
from s2aformer_mm.apis import ONNX_OPSET, ClassifierLogits, export_onnx, onnxruntime_session
from s2aformer_mm.checkpoint import check_state_dict, checkpoint_state_dict
from s2aformer_mm.engine import USER_ERRORS
from s2aformer_mm.models import switch_to_deploy

OUT_NORM = re.compile(r'^out_norm(\d+)\.')


def build(arch, classifier, out_indices, num_classes=1000, out_norm=False):
    if not classifier:
        return S2AFormer(arch, out_indices=out_indices, out_norm=out_norm)
    s2aformer_mm.require('mmpretrain')
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=num_classes,
                      in_channels=S2AFormer.arch_zoo[arch]['channels'][-1])))


def checkpoint_weights(path, classifier):
    """The state dict of ``path`` for the exported model: all of it for a classifier;
    for a backbone, the ``backbone.*`` part of a whole model's checkpoint (or a bare
    backbone state dict as it is)."""
    state = checkpoint_state_dict(path)
    if classifier or not any(k.startswith('backbone.') for k in state):
        return state
    return {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}


def max_errors(model, session, x):
    with torch.no_grad():
        ref = model(x)
    ref = ref if isinstance(ref, (tuple, list)) else (ref, )
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return [float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(outs, ref)]


def load_model(args):
    state = checkpoint_weights(args.checkpoint, args.classifier) if args.checkpoint else {}
    # A dense model's backbone normalises the features it hands to the neck
    # (out_norm=True); the exported backbone must do the same.
    norms = sorted({int(m[1]) for m in map(OUT_NORM.match, state) if m})
    out_indices = tuple(args.out_indices or norms or (0, 1, 2, 3))
    # Output norms of stages that are not exported are not needed.
    state = {k: v for k, v in state.items()
             if not (m := OUT_NORM.match(k)) or int(m[1]) in out_indices}
    model = build(args.arch, args.classifier, out_indices, args.num_classes, bool(norms))
    if args.checkpoint:
        hint = '  Is --arch the variant the checkpoint was trained with? Check also ' + (
            '--num-classes, and drop --classifier for a segmentor/detector checkpoint.'
            if args.classifier else "--out-indices (stages with an output norm in it).")
        what = f'an S2AFormer-{args.arch} ' + ('classifier' if args.classifier else
                                               f'backbone (out_indices={out_indices})')
        check_state_dict(model, state, args.checkpoint, what, hint)
        model.load_state_dict(state, strict=True)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out')
    p.add_argument('--arch', default='t', choices=list(S2AFormer.arch_zoo))
    p.add_argument('--classifier', action='store_true', help='export ImageClassifier logits')
    p.add_argument('--checkpoint', help='training-form checkpoint (state_dict or Runner ckpt) of a '
                   'classifier, or for a backbone also of a segmentor/detector: its backbone.* '
                   'weights are taken, with the output norms (out_norm<i>) if it has them')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--out-indices', type=int, nargs='+',
                   help='stages whose feature maps the backbone graph returns (default: the '
                   "stages of the checkpoint's output norms if it has any, else 0 1 2 3)")
    p.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--opset', type=int, default=ONNX_OPSET)
    p.add_argument('--no-deploy', action='store_true', help='export the training form (eval)')
    p.add_argument('--static', action='store_true', help='fixed input shape')
    p.add_argument('--atol', type=float, default=1e-4)
    args = p.parse_args(argv)
    try:
        model = load_model(args)
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None
    model.eval()
    if not args.no_deploy:
        switch_to_deploy(model)
    net = ClassifierLogits(model) if args.classifier else model
    x = torch.randn(args.batch, 3, *args.shape)
    t0 = time.time()
    export_onnx(net, args.out, x, dynamic=not args.static, opset=args.opset)
    axes = 'static' if args.static else 'dynamic batch/height/width'
    print(f'exported {args.out} (opset {args.opset}, {axes}) in {time.time() - t0:.1f}s')
    session = onnxruntime_session(args.out)
    checks = [x]
    if not args.static:
        h, w = args.shape
        checks.append(torch.randn(args.batch + 1, 3, h + 32, max(32, w - 32) + 5))
    worst = 0.
    for xi in checks:
        errs = max_errors(net, session, xi)
        worst = max(worst, *errs)
        print(f'ONNX Runtime vs PyTorch, input {tuple(xi.shape)}: max abs error per output '
              + ', '.join(f'{e:.2e}' for e in errs))
    if worst > args.atol:
        print(f'FAILED: error {worst:.2e} > atol {args.atol:.0e}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
