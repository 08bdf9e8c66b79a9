"""``tools/infer.py`` on a real photograph, for the three libraries' inferencers.

The photo is ``grace_hopper.jpg``, which matplotlib ships inside its wheel
(``matplotlib.cbook.get_sample_data``; nothing is downloaded) and which the stack
installs anyway (mmengine requires matplotlib). A crop of it saved as PNG and a
grey-scale JPEG copy give a folder of three images of different sizes and formats.
No trained weights exist, so the models carry their initial weights
(``save_initial_checkpoint``) and the tests check structure -- one drawing and one
result per image, JSON keys, class-index PNGs the size of their image, boxes inside
it -- and, for the deploy form, that it predicts what the training form predicts.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from s2aformer_mm.testing import REPO, assert_one_line_error, tool

CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
SEG_CFG = 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'
SEG_T_CFG = 'configs/mmseg/fpn_s2aformer_t_ade20k.py'
RETINA_CFG = 'configs/mmdet/retinanet_s2aformer_mini_fpn_1x_coco.py'
MASK_CFG = 'configs/mmdet/mask-rcnn_s2aformer_mini_fpn_1x_coco.py'
NO_PRETRAINED = {'model.backbone.init_cfg': None}  # no ImageNet weights exist here


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """A folder with the photo (600x512 JPEG), a 300x420 crop as PNG and a grey-scale
    JPEG (one channel), plus a text file that a folder search must skip."""
    folder = tmp_path_factory.mktemp('photos')
    hopper = Image.open(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))
    hopper.save(folder / 'hopper.jpg')
    hopper.crop((40, 100, 460, 400)).save(folder / 'hopper_crop.png')
    hopper.convert('L').save(folder / 'hopper_gray.jpg')
    (folder / 'notes.txt').write_text('not an image\n')
    return folder


def image_sizes(folder):
    """(height, width) per image stem."""
    return {p.stem: Image.open(p).size[::-1] for p in Path(folder).iterdir()
            if p.suffix in ('.jpg', '.png')}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    from s2aformer_mm.apis import save_initial_checkpoint
    folder = tmp_path_factory.mktemp('ckpts')
    return {cfg: save_initial_checkpoint(str(REPO / cfg), str(folder / f'{Path(cfg).stem}.pth'),
                                         NO_PRETRAINED)
            for cfg in (CLS_CFG, SEG_CFG, RETINA_CFG, MASK_CFG)}


def infer(config, checkpoint, *args, expect_ok=True):
    return tool('infer', config, checkpoint, *args, expect_ok=expect_ok, timeout=600)


def outputs(out_dir):
    return (sorted(p.name for p in (out_dir / 'vis').iterdir()),
            sorted(p.name for p in (out_dir / 'preds').iterdir()))


def test_classification_on_a_folder(photos, checkpoints, tmp_path):
    from mmpretrain.datasets import ImageNet
    _, out = infer(CLS_CFG, checkpoints[CLS_CFG], photos, '--out-dir', tmp_path, '--device', 'cpu')
    assert (f'[s2aformer] 3 images: drawings in {tmp_path}/vis, results (JSON) in '
            f'{tmp_path}/preds') in out
    stems = sorted(image_sizes(photos))
    assert outputs(tmp_path) == ([f'{s}.png' for s in stems], [f'{s}.json' for s in stems])
    classes = ImageNet.METAINFO['classes']  # the initial checkpoint has no dataset_meta
    for stem in stems:
        result = json.loads((tmp_path / 'preds' / f'{stem}.json').read_text())
        assert list(result) == ['pred_label', 'pred_score', 'pred_class', 'pred_scores']
        scores = np.array(result['pred_scores'])
        assert scores.shape == (1000, ) and abs(scores.sum() - 1) < 1e-4
        assert result['pred_label'] == scores.argmax()
        assert result['pred_score'] == pytest.approx(scores.max())
        assert result['pred_class'] == classes[result['pred_label']]
        assert Image.open(tmp_path / 'vis' / f'{stem}.png').size[0] > 0


def seg_predictions(out_dir):
    return {p.stem: np.array(Image.open(p)) for p in (out_dir / 'preds').glob('*.png')}


def test_segmentation_training_and_deploy_form(photos, checkpoints, tmp_path):
    _, out = infer(SEG_CFG, checkpoints[SEG_CFG], photos, '--out-dir', tmp_path / 'train')
    assert 'results (PNG of class indices)' in out
    sizes = image_sizes(photos)
    assert outputs(tmp_path / 'train') == (
        sorted(p.name for p in photos.iterdir() if p.suffix != '.txt'),
        sorted(f'{s}.png' for s in sizes))
    preds = seg_predictions(tmp_path / 'train')
    for stem, labels in preds.items():
        assert labels.shape == sizes[stem] and labels.dtype == np.uint8
        assert labels.max() < 150  # ADE20K's classes, as the model predicts them
    for name in ('hopper.jpg', 'hopper_crop.png'):  # the overlay is drawn on the image
        assert Image.open(tmp_path / 'train' / 'vis' / name).size == \
            Image.open(photos / name).size

    # The deploy form (BN folded, fused layers) predicts the same classes.
    deploy = tmp_path / 'deploy.pth'
    tool('deployment/fuse_checkpoint', SEG_CFG, checkpoints[SEG_CFG], deploy)
    _, out = infer(SEG_CFG, deploy, photos / 'hopper.jpg', photos / 'hopper_crop.png',
                   '--out-dir', tmp_path / 'deploy')
    assert '[s2aformer] 2 images' in out
    for stem, labels in seg_predictions(tmp_path / 'deploy').items():
        assert (labels == preds[stem]).mean() > 0.999, stem


@pytest.mark.parametrize('config,score_thr', [
    (RETINA_CFG, 'model.test_cfg.score_thr=0'),
    (MASK_CFG, 'model.test_cfg.rcnn.score_thr=0'),
], ids=['retinanet', 'mask-rcnn'])
def test_detection(photos, checkpoints, tmp_path, config, score_thr):
    # Initial weights score every box ~0.01: without the configs' 0.05 test threshold
    # the JSON holds the 100 detections the model keeps (test_cfg max_per_img).
    _, out = infer(config, checkpoints[config], photos / 'hopper.jpg', '--out-dir', tmp_path,
                   '--score-thr', '0.5', '--cfg-options', score_thr)
    assert outputs(tmp_path) == (['hopper.jpg'], ['hopper.json'])
    result = json.loads((tmp_path / 'preds' / 'hopper.json').read_text())
    n = len(result['labels'])
    assert n == 100 and len(result['scores']) == n and len(result['bboxes']) == n
    assert all(0 <= label < 80 for label in result['labels'])
    boxes = np.array(result['bboxes'])
    h, w = image_sizes(photos)['hopper']
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes.min() >= 0 and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    if config == MASK_CFG:
        assert len(result['masks']) == n and all(m['size'] == [h, w] for m in result['masks'])
    else:
        assert 'masks' not in result
    assert Image.open(tmp_path / 'vis' / 'hopper.jpg').size == (w, h)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize('problem', ['missing', 'empty-folder', 'not-an-image', 'empty-file'])
def test_input_errors(photos, tmp_path, problem):
    """Refused before the model is built (the checkpoint is never read)."""
    if problem == 'missing':
        path, expected = tmp_path / 'nope.jpg', ['does not exist']
    elif problem == 'empty-folder':
        path, expected = tmp_path / 'empty', ['holds no image']
        path.mkdir()
        (path / 'readme.txt').write_text('no images here\n')
    elif problem == 'not-an-image':
        path, expected = tmp_path / 'fake.jpg', ['is not an image that OpenCV can decode']
        path.write_text('text, not JPEG\n')
    else:
        path, expected = tmp_path / 'zero.png', ['is not an image', '(an empty file)']
        path.write_bytes(b'')
    rc, out = infer(SEG_CFG, tmp_path / 'never-read.pth', photos / 'hopper.jpg', path,
                    expect_ok=False)
    assert_one_line_error(rc, out, f"'{path}'", *expected)


def test_duplicate_output_names_are_refused(photos, tmp_path):
    other = tmp_path / 'hopper.png'
    Image.open(photos / 'hopper_crop.png').save(other)
    rc, out = infer(SEG_CFG, tmp_path / 'never-read.pth', photos, other, expect_ok=False)
    assert_one_line_error(rc, out, f"'{other}' would write the same output files (hopper.*)")


@pytest.mark.parametrize('problem', ['missing', 'not-a-checkpoint', 'other-variant'])
def test_checkpoint_errors(photos, tmp_path, problem):
    if problem == 'missing':
        ckpt, expected = tmp_path / 'nope.pth', ['Checkpoint file not found']
    elif problem == 'not-a-checkpoint':
        ckpt, expected = photos / 'hopper.jpg', ['is not a PyTorch checkpoint']
    else:  # S2AFormer-T's Semantic FPN weights for the mini config: strict, not a warning
        from s2aformer_mm.apis import save_initial_checkpoint
        ckpt = save_initial_checkpoint(str(REPO / SEG_T_CFG), str(tmp_path / 't.pth'),
                                       NO_PRETRAINED)
        expected = ['does not match this model', 'shape mismatches', 'same model and variant']
    rc, out = infer(SEG_CFG, ckpt, photos / 'hopper.jpg', '--out-dir', tmp_path / 'out',
                    expect_ok=False)
    assert_one_line_error(rc, out, f"'{ckpt}'", *expected)
    assert not (tmp_path / 'out' / 'preds').exists()


def test_deploy_checkpoint_of_another_variant_is_a_mismatch(tmp_path):
    """load_deploy_model's strict load raises torch's long RuntimeError; the inference
    API turns it into the same summary as for training checkpoints."""
    from s2aformer_mm.apis import build_model_from_config, load_inference_model
    from s2aformer_mm.checkpoint import CheckpointMismatchError
    from s2aformer_mm.models import switch_to_deploy
    from mmengine.config import Config
    cfg = Config.fromfile(REPO / 'configs/mmpretrain/s2aformer_t_4xb256_in1k.py')
    path = tmp_path / 't_deploy.pth'
    torch.save({'state_dict': switch_to_deploy(build_model_from_config(cfg)).state_dict(),
                'meta': {'s2aformer_deploy': True}}, path)
    with pytest.raises(CheckpointMismatchError, match='does not match the deploy form of this '
                       r'model:\n.*shape mismatches'):
        load_inference_model(str(REPO / CLS_CFG), str(path))
