"""Export an S2AFormer backbone or classifier to ONNX and check it with ONNX Runtime.

    python tools/deployment/export_onnx.py OUT.onnx --arch t [--classifier] \
        [--checkpoint CKPT] [--shape 224 224] [--batch 1] [--no-deploy] [--static]

The model is switched to its deploy form first (BN folded, heads merged; see
``s2aformer_mm/deploy.py``) unless ``--no-deploy``. Batch, height and width are
dynamic axes unless ``--static``. After export the graph is run in ONNX Runtime at
the export size and at a second size/batch, and the max abs error against PyTorch
is printed; the script exits 1 if it exceeds ``--atol`` (default 1e-4).
The backbone graph returns the feature maps of ``--out-indices``; the classifier
graph returns logits (inputs normalised already: the data preprocessor is not
in the graph). Opset and limits: docs/deployment.md.
"""
import argparse
import sys
import time

import torch
from mmengine.registry import DefaultScope

import s2aformer_mm
from s2aformer_mm import S2AFormer
from s2aformer_mm.checkpoint import safe_load
from s2aformer_mm.deploy import (ONNX_OPSET, ClassifierLogits, export_onnx, onnxruntime_session,
                                 switch_to_deploy)


def build(arch, classifier, out_indices, num_classes=1000):
    if not classifier:
        return S2AFormer(arch, out_indices=out_indices)
    s2aformer_mm.require('mmpretrain')
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=num_classes,
                      in_channels=S2AFormer.arch_zoo[arch]['channels'][-1])))


def max_errors(model, session, x):
    with torch.no_grad():
        ref = model(x)
    ref = ref if isinstance(ref, (tuple, list)) else (ref, )
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return [float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(outs, ref)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out')
    p.add_argument('--arch', default='t', choices=list(S2AFormer.arch_zoo))
    p.add_argument('--classifier', action='store_true', help='export ImageClassifier logits')
    p.add_argument('--checkpoint', help='training-form checkpoint (state_dict or Runner ckpt)')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--out-indices', type=int, nargs='+', default=[0, 1, 2, 3])
    p.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--opset', type=int, default=ONNX_OPSET)
    p.add_argument('--no-deploy', action='store_true', help='export the training form (eval)')
    p.add_argument('--static', action='store_true', help='fixed input shape')
    p.add_argument('--atol', type=float, default=1e-4)
    args = p.parse_args(argv)

    model = build(args.arch, args.classifier, tuple(args.out_indices), args.num_classes)
    if args.checkpoint:
        state = safe_load(args.checkpoint)
        state = state.get('state_dict', state)
        if not args.classifier:
            state = {k[len('backbone.'):] if k.startswith('backbone.') else k: v
                     for k, v in state.items() if not k.startswith('head.')}
        model.load_state_dict(state, strict=True)
    model.eval()
    if not args.no_deploy:
        switch_to_deploy(model)
    net = ClassifierLogits(model) if args.classifier else model
    x = torch.randn(args.batch, 3, *args.shape)
    t0 = time.time()
    export_onnx(net, args.out, x, dynamic=not args.static, opset=args.opset)
    print(f'exported {args.out} (opset {args.opset}, '
          f'{"static" if args.static else "dynamic batch/height/width"}) in {time.time() - t0:.1f}s')
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
