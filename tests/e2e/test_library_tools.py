"""The libraries' own analysis tools (``<lib>/.mim/tools/``) on our configs, logs and
``tools/test.py --out`` results, run as subprocesses exactly as docs/library_tools.md
gives them, plus ``--out`` following the config's scope as each library's
``tools/test.py`` reads it. What does not work is explained in that doc; the
workarounds it gives are run here too."""
import importlib.util
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from s2aformer_mm.testing import ENV, REPO, loader_opts, run, test_metrics, tool

SEG_CFG = 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'
CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
RETINA_CFG = 'configs/mmdet/retinanet_s2aformer_mini_fpn_1x_coco.py'
MASK_CFG = 'configs/mmdet/mask-rcnn_s2aformer_mini_fpn_1x_coco.py'
DOC = REPO / 'docs' / 'library_tools.md'
HEADLESS = dict(ENV, MPLBACKEND='Agg')


def lib_tool(lib, path, *args, expect_ok=True):
    """Run ``<lib>/.mim/tools/<path>`` with this interpreter, headless."""
    script = Path(importlib.util.find_spec(lib).origin).parent / '.mim' / 'tools' / path
    return run([sys.executable, script, *args], expect_ok=expect_ok, env=HEADLESS)


def seg_opts(data, extra=()):
    """64-px images, 2 iterations with validation (the shrink of tests/e2e/test_tools.py)."""
    return loader_opts(data / 'ade', extra=[
        'train_dataloader.dataset.pipeline.2.scale=(256,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'model.data_preprocessor.size=(64,64)',
        'val_dataloader.dataset.pipeline.1.scale=(256,64)',
        'test_dataloader.dataset.pipeline.1.scale=(256,64)',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
        'model.backbone.init_cfg=None', *extra])


def det_opts(data):
    ann = data / 'coco' / 'annotations' / 'instances_val2017.json'
    return loader_opts(data / 'coco', extra=[
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        'val_dataloader.dataset.pipeline.1.scale=(128,128)',
        'test_dataloader.dataset.pipeline.1.scale=(128,128)',
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
        'model.backbone.init_cfg=None', 'model.test_cfg.score_thr=0'])


@pytest.fixture(scope='module')
def seg_run(data, tmp_path_factory):
    """A 2-iteration Semantic FPN run: its log, checkpoint and saved config."""
    work = tmp_path_factory.mktemp('seg')
    tool('train', SEG_CFG, '--work-dir', work, '--cfg-options', *seg_opts(data))
    return work


# --------------------------------------------------------------------------- --out
def test_out_follows_the_scope_like_the_libraries_tools(tmp_path):
    from s2aformer_mm.engine import UsageError, add_prediction_dump
    seg = Config(dict(test_evaluator=dict(type='IoUMetric', iou_metrics=['mIoU'])))
    add_prediction_dump(seg, 'mmseg', str(tmp_path / 'preds'))  # as mmseg's tools/test.py
    assert seg.test_evaluator == dict(type='IoUMetric', iou_metrics=['mIoU'],
                                      output_dir=str(tmp_path / 'preds'), keep_results=True)
    assert (tmp_path / 'preds').is_dir()  # by every rank: IoUMetric makes it on rank 0 only
    with pytest.raises(UsageError, match=r"for an mmseg config --out names a directory .* "
                       r"e\.g\. --out .*/preds\.$"):
        add_prediction_dump(seg, 'mmseg', str(tmp_path / 'preds.pkl'))

    for scope, dump in [('mmdet', 'DumpDetResults'), ('mmpretrain', 'mmengine.DumpPredictions')]:
        cfg = Config(dict(test_evaluator=[dict(type='Metric')]))
        add_prediction_dump(cfg, scope, str(tmp_path / 'p.pkl'))
        assert cfg.test_evaluator[1] == dict(type=dump, out_file_path=str(tmp_path / 'p.pkl'))
        with pytest.raises(UsageError, match=f"for an {scope} config the predictions are "
                           'pickled .*; use a .pkl name'):
            add_prediction_dump(cfg, scope, str(tmp_path / 'preds'))


def doc_snippet():
    """The Python block docs/library_tools.md says the tests run as written."""
    text = DOC.read_text()
    marker = text.index('<!-- tests/e2e/test_library_tools.py runs this block as written -->')
    return re.search(r'```python\n(.*?)```', text[marker:], re.S).group(1)


def test_mmseg_out_dir_and_the_ade20k_confusion_matrix_workaround(data, seg_run, tmp_path):
    preds = tmp_path / 'preds'
    _, out = tool('test', SEG_CFG, seg_run / 'iter_2.pth', '--work-dir', tmp_path, '--out',
                  preds, '--cfg-options', *seg_opts(data))
    a_acc = test_metrics(out)['aAcc']
    annotations = data / 'ade' / 'annotations' / 'validation'
    # One PNG per test image, named and sized as its annotation, in ADE20K's labels 1..150.
    assert sorted(p.name for p in preds.iterdir()) == sorted(p.name for p in annotations.iterdir())
    for png in preds.iterdir():
        labels = np.array(Image.open(png))
        assert labels.shape == np.array(Image.open(annotations / png.name)).shape
        assert 1 <= labels.min() and labels.max() <= 150

    # The doc's replacement for mmseg's confusion_matrix.py agrees with IoUMetric's aAcc.
    script = tmp_path / 'ade_confusion.py'
    script.write_text(doc_snippet())
    _, out = run([sys.executable, script, preds, annotations, tmp_path / 'cm.npy'])
    matrix = np.load(tmp_path / 'cm.npy')
    assert matrix.shape == (150, 150)
    assert 100 * np.trace(matrix) / matrix.sum() == pytest.approx(a_acc, abs=0.006), out
    gt = np.concatenate([np.array(Image.open(p)).ravel() for p in annotations.iterdir()])
    assert matrix.sum() == (gt > 0).sum()  # every pixel but ADE's "other"


def test_mmseg_confusion_matrix_tool_misplaces_ade20k_pixels(data, seg_run):
    """The reason the doc gives: fed with the ground truth itself (in the PNG format
    tools/test.py --out writes), mmseg's calculate_confusion_matrix puts nothing on the
    diagonal. If a future mmseg fixes it, this fails: update docs/library_tools.md."""
    script = (Path(importlib.util.find_spec('mmseg').origin).parent / '.mim' / 'tools' /
              'analysis_tools' / 'confusion_matrix.py')
    annotations = data / 'ade' / 'annotations' / 'validation'
    code = f'''
import os, runpy, numpy as np
from PIL import Image
from mmengine.config import Config
tool = runpy.run_path({str(script)!r})
dataset = tool['DATASETS'].build(Config.fromfile({str(seg_run / Path(SEG_CFG).name)!r}
                                               ).test_dataloader.dataset)
ann = {str(annotations)!r}
perfect = [np.array(Image.open(os.path.join(ann, f))) for f in sorted(os.listdir(ann))]
m = tool['calculate_confusion_matrix'](dataset, perfect)
print('DIAGONAL SHARE', np.trace(m) / m.sum())
'''
    _, out = run([sys.executable, '-c', code])
    share = float(re.search(r'DIAGONAL SHARE (\S+)', out).group(1))
    assert share < 0.5, out[-2000:]


# --------------------------------------------------------------------------- logs
def test_mmpretrain_analyze_logs_on_a_segmentation_run(seg_run, tmp_path):
    log = next(seg_run.glob('2*/vis_data/2*.json'))
    _, out = lib_tool('mmpretrain', 'analysis_tools/analyze_logs.py', 'plot_curve', log,
                      '--keys', 'loss', 'mIoU', '--out', tmp_path / 'curve.png')
    assert 'metric is loss' in out and 'metric is mIoU' in out
    assert Image.open(tmp_path / 'curve.png').size[0] > 100
    _, out = lib_tool('mmpretrain', 'analysis_tools/analyze_logs.py', 'cal_train_time', log)
    assert re.search(r'average iter time: \d+\.\d+ s/iter', out), out[-2000:]


# --------------------------------------------------------------------------- datasets
def test_mmdet_browse_dataset(data, tmp_path):
    lib_tool('mmdet', 'analysis_tools/browse_dataset.py', MASK_CFG, '--output-dir', tmp_path,
             '--not-show', '--cfg-options', f'train_dataloader.dataset.data_root={data / "coco"}')
    assert len(list(tmp_path.glob('*.jpg'))) == 8  # every training image, masks drawn


def test_mmseg_browse_dataset_through_the_docs_wrapper(seg_run, tmp_path):
    code = re.search(r'python -c "\n(.*?)" \\\n', DOC.read_text(), re.S).group(1)
    script = (Path(importlib.util.find_spec('mmseg').origin).parent / '.mim' / 'tools' /
              'analysis_tools' / 'browse_dataset.py')
    run([sys.executable, '-c', code, script, seg_run / Path(SEG_CFG).name, '--output-dir',
         tmp_path, '--not-show'], env=HEADLESS)
    assert len(list(tmp_path.glob('*.jpg'))) == 8


def test_mmpretrain_browse_dataset_with_the_docs_options(data, tmp_path):
    lib_tool('mmpretrain', 'visualization/browse_dataset.py', CLS_CFG, '--output-dir', tmp_path,
             '--not-show', '--mode', 'original', '--cfg-options',
             f'train_dataloader.dataset.data_root={data / "imagenet"}',
             'visualizer._delete_=True', 'visualizer.type=UniversalVisualizer')
    assert len(list(tmp_path.iterdir())) == 8


# --------------------------------------------------------------------------- FLOPs
def test_get_flops_of_mmdet_and_mmpretrain(data, tmp_path):
    # mmdet counts on real validation images (here 128 px); the params are the model's.
    _, out = lib_tool('mmdet', 'analysis_tools/get_flops.py', RETINA_CFG, '--num-images', '1',
                      '--cfg-options', *det_opts(data))
    assert 'Params: 11.655M' in out, out[-2000:]  # the README's RetinaNet-mini 11.65 M
    _, out = lib_tool('mmpretrain', 'analysis_tools/get_flops.py', CLS_CFG)
    assert 'Input shape: (3, 224, 224)' in out and re.search(r'Flops: \d', out), out[-2000:]


# --------------------------------------------------------------------------- confusion
def test_mmdet_and_mmpretrain_confusion_matrix_on_test_out(data, tmp_path):
    from s2aformer_mm.apis import save_initial_checkpoint
    no_pretrained = {'model.backbone.init_cfg': None}
    det_ckpt = save_initial_checkpoint(str(REPO / RETINA_CFG), str(tmp_path / 'det.pth'),
                                       no_pretrained)
    tool('test', RETINA_CFG, det_ckpt, '--work-dir', tmp_path / 'det', '--out',
         tmp_path / 'dets.pkl', '--cfg-options', *det_opts(data))
    lib_tool('mmdet', 'analysis_tools/confusion_matrix.py',
             tmp_path / 'det' / Path(RETINA_CFG).name, tmp_path / 'dets.pkl', tmp_path / 'det_cm',
             '--score-thr', '0')
    assert Image.open(tmp_path / 'det_cm' / 'confusion_matrix.png').size[0] > 100

    cls_ckpt = save_initial_checkpoint(str(REPO / CLS_CFG), str(tmp_path / 'cls.pth'))
    cls_opts = loader_opts(data / 'imagenet')
    tool('test', CLS_CFG, cls_ckpt, '--work-dir', tmp_path / 'cls', '--out', tmp_path / 'p.pkl',
         '--cfg-options', *cls_opts)
    lib_tool('mmpretrain', 'analysis_tools/confusion_matrix.py', tmp_path / 'cls' /
             Path(CLS_CFG).name, tmp_path / 'p.pkl', '--out', tmp_path / 'cm.pkl',
             '--show-path', tmp_path / 'cm.png')
    matrix = pickle.loads((tmp_path / 'cm.pkl').read_bytes())
    assert tuple(matrix.shape) == (1000, 1000) and int(matrix.sum()) == 4  # 4 test images
    assert (tmp_path / 'cm.png').stat().st_size > 0
