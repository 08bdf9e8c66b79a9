"""Run a trained (or deploy-form) model on image files with the libraries' inferencers.

    python tools/infer.py CONFIG CHECKPOINT INPUTS... [--out-dir DIR] [--device cpu]
                          [--show] [--score-thr T] [--cfg-options k=v ...]

INPUTS are image files and/or folders of images. The config's default_scope picks
mmpretrain's ImageClassificationInferencer, mmseg's MMSegInferencer or mmdet's
DetInferencer. CHECKPOINT is a training checkpoint (loaded strictly: a checkpoint of
another variant is an error) or one written by tools/deployment/fuse_checkpoint.py.
Per image, DIR/vis/ gets the drawn prediction and DIR/preds/<stem> the result: JSON
for classification (label, score, class) and detection (labels, scores, boxes, masks),
a PNG of class indices for segmentation. The logic is in s2aformer_mm/apis/inference.py.
"""
import argparse

from mmengine.config import DictAction

from s2aformer_mm.apis import build_inferencer, collect_images, infer_images, load_inference_model
from s2aformer_mm.engine import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Infer on images with an S2AFormer model '
                                     "(mmpretrain / mmseg / mmdet, by the config's default_scope)")
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='training-form or deploy-form checkpoint')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', default='outputs',
                        help='drawings go to DIR/vis, results to DIR/preds (default: outputs)')
    parser.add_argument('--device', help='e.g. cpu, cuda:0 (default: cuda if available)')
    parser.add_argument('--show', action='store_true', help='also show each drawing in a window')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this (the JSON keeps every '
                             "detection the model's test_cfg keeps, as mmdet's does)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, as given to tools/train.py for the run')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    images = collect_images(args.inputs)  # before the model: a typo fails at once
    model, cfg, scope = load_inference_model(args.config, args.checkpoint, args.cfg_options)
    inferencer = build_inferencer(model, cfg, scope, args.device)
    written = infer_images(inferencer, scope, images, args.out_dir, args.show, args.score_thr)
    kind = 'PNG of class indices' if scope == 'mmseg' else 'JSON'
    print(f'[s2aformer] {len(written)} images: drawings in {args.out_dir}/vis, results '
          f'({kind}) in {args.out_dir}/preds', flush=True)
    return written


if __name__ == '__main__':
    try:
        main()
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None
