"""Write the deploy form (BN folded, heads merged) of a trained checkpoint.

    python tools/deployment/fuse_checkpoint.py CONFIG CKPT OUT [--check]

Builds ``CONFIG``'s model (mmpretrain / mmseg / mmdet scope), loads ``CKPT``
(a Runner checkpoint or a bare state dict) strictly, switches every S2AFormer
part to its deploy form (``s2aformer_mm.models.switch_to_deploy``) and saves
``{'state_dict': ..., 'meta': {'s2aformer_deploy': True, ...}}`` to ``OUT``.
Parameter names differ from the training form: load ``OUT`` with
``s2aformer_mm.apis.load_deploy_model(CONFIG, OUT)``. ``--check`` compares the
backbone outputs of both forms on a random 224x224 batch (max abs error).
"""
import argparse
import sys

import torch

import s2aformer_mm  # noqa: F401  (registers the models)
from s2aformer_mm.checkpoint import DEPLOY_META_KEY, safe_load
from s2aformer_mm.apis import build_model_from_config
from s2aformer_mm.models.reparam import count_batchnorms, switch_to_deploy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('out')
    p.add_argument('--check', action='store_true')
    args = p.parse_args(argv)

    model = build_model_from_config(args.config)
    ckpt = safe_load(args.checkpoint)
    state = ckpt.get('state_dict', ckpt)
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    if args.check:
        with torch.no_grad():
            ref = model.backbone(x)
    n_bn = count_batchnorms(model)
    switch_to_deploy(model)
    print(f'BatchNorm modules: {n_bn} -> {count_batchnorms(model)}')
    if args.check:
        with torch.no_grad():
            out = model.backbone(x)
        err = max(float((a - b).abs().max()) for a, b in zip(ref, out))
        print(f'backbone outputs, training vs deploy form: max abs error {err:.2e}')
    meta = dict(ckpt.get('meta', {})) if isinstance(ckpt.get('meta'), dict) else {}
    meta.update({DEPLOY_META_KEY: True, 'source': args.checkpoint, 'config': args.config})
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, args.out)
    print(f'saved {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
