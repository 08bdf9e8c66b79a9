"""Write small procedurally drawn data sets in the real ImageNet / ADE20K / COCO formats.

    python tools/data/generate_demo_data.py ade20k   --root data/ade/ADEChallengeData2016
    python tools/data/generate_demo_data.py coco     --root data/coco
    python tools/data/generate_demo_data.py imagenet --root data/imagenet --size 64

Objects have class-specific shapes and colours over varied textured
backgrounds, so models can learn them (see docs/datasets.md).
"""
import argparse
import os
import os.path as osp
import time

from s2aformer_mm.datasets import generate_ade20k, generate_coco, generate_imagenet
from s2aformer_mm.models.s2aformer import MIN_INPUT_SIZE

GENERATORS = {'imagenet': generate_imagenet, 'ade20k': generate_ade20k, 'coco': generate_coco}
DEFAULT_ROOTS = {'imagenet': 'data/imagenet', 'ade20k': 'data/ade/ADEChallengeData2016',
                 'coco': 'data/coco'}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('kind', choices=sorted(GENERATORS))
    parser.add_argument('--root', help='output directory (default: the configs\' data root)')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=40, help='validation images')
    parser.add_argument('--size', type=int, nargs='+', default=[128],
                        help=f'image side, or WIDTH HEIGHT; at least {MIN_INPUT_SIZE}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='write into a non-empty root (existing files are replaced)')
    args = parser.parse_args()
    if len(args.size) not in (1, 2):
        parser.error('--size takes one side or WIDTH HEIGHT')
    if min(args.size) < MIN_INPUT_SIZE:
        parser.error(f'--size {" ".join(map(str, args.size))}: images must be at least '
                     f'{MIN_INPUT_SIZE} px a side (S2AFormer\'s total stride)')
    return args


def main():
    args = parse_args()
    root = args.root or DEFAULT_ROOTS[args.kind]
    if osp.isdir(root) and os.listdir(root) and not args.overwrite:
        raise SystemExit(f'{root!r} is not empty; refusing to mix demo data with real data. '
                         f'Choose another --root or pass --overwrite.')
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    t0 = time.time()
    counts = GENERATORS[args.kind](root, num_train=args.num_train, num_val=args.num_val,
                                   size=size, seed=args.seed)
    print(f'[demo data] {args.kind}: {counts} images of size {size} written to {root} '
          f'in {time.time() - t0:.1f}s')


if __name__ == '__main__':
    main()
