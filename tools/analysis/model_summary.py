"""Build every S2AFormer variant through all three registries and compare counts.

For each variant and each of mmpretrain / mmseg / mmdet: build
``dict(type='S2AFormer')`` under that library's default scope (and via its
scoped name), count the backbone's parameters, and -- for mmpretrain -- the full
``ImageClassifier`` with the paper's head; MACs at 224x224 in the paper's
convention and honestly; output shapes for a 224x224 image. Exits non-zero if a
count is outside tolerance (params 0.2 %, MACs 1 %).

    python tools/analysis/model_summary.py [--variants mini t] [--shape 224 224]
"""
import argparse
import sys
import time

import torch
from mmengine.registry import DefaultScope

import s2aformer_mm
from s2aformer_mm.complexity import (PAPER, REFERENCE, backbone_macs, count_params, describe,
                                     fmt_row)

PARAM_TOL, MAC_TOL = 0.002, 0.01
SCOPES = ('mmpretrain', 'mmseg', 'mmdet')


def registry(scope):
    s2aformer_mm.require(scope)
    module = __import__(f'{scope}.registry', fromlist=['MODELS'])
    return module.MODELS


def build_classifier(arch, num_classes=1000):
    cfg = dict(type='ImageClassifier',
               backbone=dict(type='S2AFormer', arch=arch),
               head=dict(type='S2AFormerClsHead', num_classes=num_classes,
                         in_channels=S2AFormerChannels(arch)))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return registry('mmpretrain').build(cfg)


def S2AFormerChannels(arch):
    return s2aformer_mm.S2AFormer.arch_zoo[arch]['channels'][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(REFERENCE), choices=list(REFERENCE))
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f's2aformer_mm {s2aformer_mm.__version__}, torch {torch.__version__}; registries: '
          f'{", ".join(s2aformer_mm.REGISTERED)}; '
          f'missing: {", ".join(s2aformer_mm.MISSING) or "none"}')
    ok = True
    widths = (8, 10, 9, 8, 9, 8, 9, 9, 8, 9, 42)
    print('\n' + fmt_row(('variant', 'scope', 'params M', 'paper', 'err', 'bb M', 'ref', 'err',
                          '', '', 'outputs @%dx%d (C,H,W)' % tuple(args.shape)), widths))
    macs_rows = []
    for arch in args.variants:
        t0 = time.time()
        ref = REFERENCE[arch]
        for scope in SCOPES:
            with DefaultScope.overwrite_default_scope(scope):
                bb = registry(scope).build(
                    dict(type='S2AFormer', arch=arch, out_indices=(0, 1, 2, 3)))
            scoped = registry(scope).build(dict(type=f'{scope}.S2AFormer', arch=arch))
            assert type(scoped) is type(bb)
            bb.eval()
            with torch.no_grad():
                shapes = [tuple(o.shape[1:]) for o in bb(torch.randn(1, 3, *args.shape))]
            bb_params = count_params(bb) / 1e6
            bb_err, bb_ok = describe(bb_params, ref['backbone'], PARAM_TOL)
            if scope == 'mmpretrain':
                clf = build_classifier(arch)
                params = count_params(clf) / 1e6
                p_err, p_ok = describe(params, ref['params'], PARAM_TOL)
                cells = (f'{params:.3f}', f'{PAPER[arch]["params"]:.2f}', p_err)
                macs = backbone_macs(torch.nn.Sequential(clf.backbone, HeadOnly(clf.head)),
                                     args.shape)
                macs_rows.append((arch, macs))
            else:
                p_ok, cells = True, ('-', '-', '-')
            ok &= bb_ok and p_ok
            outputs = ' '.join('x'.join(map(str, s)) for s in shapes)
            print(fmt_row((arch, scope, *cells, f'{bb_params:.3f}', f'{ref["backbone"]:.3f}',
                           bb_err, '', '', outputs), widths))
        print(f'  ({arch}: built 3 registries in {time.time() - t0:.1f}s)', flush=True)

    if tuple(args.shape) == (224, 224):
        print('\nGMACs @224x224 of the classifier (paper convention: attention matmuls not '
              'counted, element-wise ops counted)')
        w = (8, 10, 8, 8, 11, 8, 8)
        print(fmt_row(('variant', 'paper-conv', 'paper', 'err', 'honest', 'ref', 'err'), w))
        for arch, macs in macs_rows:
            ref = REFERENCE[arch]
            pc, hon = macs['paper'] / 1e9, macs['honest'] / 1e9
            e1, ok1 = describe(pc, PAPER[arch]['gmacs'], MAC_TOL)
            e2, ok2 = describe(hon, ref['gmacs_honest'], MAC_TOL)
            ok &= ok1 and ok2
            print(fmt_row((arch, f'{pc:.3f}', f'{PAPER[arch]["gmacs"]:.3f}', e1, f'{hon:.3f}',
                           f'{ref["gmacs_honest"]:.3f}', e2), w))
    print(f'\nparams tolerance {PARAM_TOL:.1%}, MACs tolerance {MAC_TOL:.0%}: '
          + ('ALL WITHIN TOLERANCE' if ok else 'OUT OF TOLERANCE'))
    return 0 if ok else 1


class HeadOnly(torch.nn.Module):
    """Wraps an mmpretrain head so that ``module(feats)`` returns logits."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, feats):
        return self.head(feats)


if __name__ == '__main__':
    sys.exit(main())
