"""End-to-end tests of tools/train.py, tools/test.py and tools/dist_train.sh on CPU.

Every task family trains a few iterations of its *shipped* config (shrunk through
``--cfg-options``) on procedurally generated data in the real formats, then is
evaluated; the metrics are read from ``tools/test.py``'s output. Subprocesses run
with one thread each: the machine may be shared, and oversubscribed OpenMP
threads slow small models down by an order of magnitude.
"""
import importlib.util
import json
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s2aformer_mm.testing import (ENV, REPO, assert_one_line_error, dumped_config, loader_opts,
                                  run, test_metrics, tool)

CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'
SEG_CFG = 'configs/mmseg/fpn_s2aformer_mini_ade20k.py'
RETINA_CFG = 'configs/mmdet/retinanet_s2aformer_mini_fpn_1x_coco.py'
MASK_CFG = 'configs/mmdet/mask-rcnn_s2aformer_mini_fpn_1x_coco.py'


# --------------------------------------------------------------------------- classification
@pytest.fixture(scope='module')
def cls_run(data, tmp_path_factory):
    work = tmp_path_factory.mktemp('cls')
    opts = loader_opts(data / 'imagenet', batch=4, extra=['train_cfg.max_epochs=1'])
    # --amp on CPU: bf16 autocast (the checkpoint stays fp32 for the seg test).
    _, out = tool('train', CLS_CFG, '--work-dir', work, '--amp', '--cfg-options', *opts)
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file(), out[-3000:]
    assert 'BF16AutocastOptimWrapper' in out
    return work, ckpt, opts


def test_classification_train_and_test(cls_run):
    work, ckpt, opts = cls_run
    _, out = tool('test', CLS_CFG, ckpt, '--work-dir', work, '--show-dir', work / 'show',
                  '--out', work / 'plain.pkl', '--cfg-options', *opts)
    metrics = test_metrics(out)
    assert 0 <= metrics['accuracy/top1'] <= 100
    assert len(list((work / 'show').rglob('*.png'))) == 4
    assert json.loads((work / 'test_metrics.json').read_text()) == metrics

    # --tta: mmpretrain has no TTA config of its own; flip and average, as its tools do.
    _, out = tool('test', CLS_CFG, ckpt, '--work-dir', work / 'tta', '--tta',
                  '--out', work / 'tta.pkl', '--cfg-options', *opts)
    assert 0 <= test_metrics(out)['accuracy/top1'] <= 100
    ran = dumped_config(work / 'tta', CLS_CFG)
    assert ran.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert ran.model.module.type == 'ImageClassifier'
    flips = ran.test_dataloader.dataset.pipeline[-1]
    assert flips.type == 'TestTimeAug' and [t.prob for t in flips.transforms[0]] == [1., 0.]
    plain, tta = (pickle.loads((work / f'{n}.pkl').read_bytes()) for n in ('plain', 'tta'))
    scores = np.stack([np.asarray(p['pred_score']) for p in tta])
    assert np.allclose(scores.sum(1), 1, atol=1e-5)  # an average of two softmaxes
    assert not np.array_equal(scores, np.stack([np.asarray(p['pred_score']) for p in plain]))
    rc, out = tool('test', CLS_CFG, ckpt, '--work-dir', work / 'tta', '--tta', '--show-dir',
                   work / 'tta_show', '--cfg-options', *opts, expect_ok=False)
    assert rc != 0 and "mmpretrain's VisualizationHook cannot draw" in out, out[-2000:]


# --------------------------------------------------------------------------- Semantic FPN
SEG_SMALL = [
    'train_dataloader.dataset.pipeline.2.scale=(256,64)',
    'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
    'model.data_preprocessor.size=(64,64)',
    'val_dataloader.dataset.pipeline.1.scale=(256,64)',
    'test_dataloader.dataset.pipeline.1.scale=(256,64)',
]


def seg_opts(data, iters, extra=()):
    return loader_opts(data / 'ade', extra=[
        *SEG_SMALL, f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}', *extra])


def test_semantic_fpn_from_classifier_resume_and_test(data, cls_run, tmp_path):
    _, cls_ckpt, _ = cls_run
    opts = seg_opts(data, 2, [f'model.backbone.init_cfg.checkpoint={cls_ckpt}'])
    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options', *opts)
    # Every backbone tensor of the classifier is loaded through prefix='backbone.';
    # only the dense-only output norms are new.
    match = re.search(r'Loaded (\d+)/(\d+) backbone tensors from (\S+?)(?:; newly initialised: '
                      r'(.*))?$', out, re.M)
    assert match, out[-3000:]
    loaded, total = int(match.group(1)), int(match.group(2))
    new = [k.strip() for k in (match.group(4) or '').split(',') if k.strip()]
    assert loaded > 100 and all(k.startswith('out_norm') for k in new), match.group(0)
    assert loaded + 2 * 4 == total  # 4 output LayerNorms (weight + bias)
    assert 'Iter(val) [2/2]' in out and 'mIoU' in out

    # Resume (auto: latest checkpoint in the work dir) continues at iteration 3.
    opts = seg_opts(data, 4, [f'model.backbone.init_cfg.checkpoint={cls_ckpt}'])
    _, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--resume', '--cfg-options', *opts)
    assert re.search(r'resumed epoch: \d+, iter: 2', out), out[-3000:]
    assert 'Iter(train) [3/4]' in out and 'Iter(train) [1/4]' not in out
    assert '[s2aformer] rank 0/1: training finished at iteration 4' in out

    show = tmp_path / 'show'
    _, out = tool('test', SEG_CFG, tmp_path / 'iter_4.pth', '--work-dir', tmp_path,
                  '--show-dir', show, '--out', tmp_path / 'preds', '--cfg-options', *opts)
    metrics = test_metrics(out)
    assert {'mIoU', 'aAcc', 'mAcc'} <= set(metrics) and 0 <= metrics['mIoU'] <= 100
    assert len(list(show.rglob('*.png'))) == 4
    assert len(list((tmp_path / 'preds').glob('*.png'))) == 4  # mmseg's --out DIR

    # The config the tools wrote into the work dir also runs under mmseg's own
    # tools/test.py: custom_imports=['s2aformer_mm'] registers the tools' hooks too.
    stock = Path(importlib.util.find_spec('mmseg').origin).parent / '.mim' / 'tools' / 'test.py'
    _, out = run([sys.executable, stock, tmp_path / Path(SEG_CFG).name, tmp_path / 'iter_4.pth',
                  '--work-dir', tmp_path / 'stock'])
    stock_miou = re.search(r'Iter\(test\) \[\d+/\d+\]\s+aAcc: [\d.]+\s+mIoU: ([\d.]+)', out)
    assert stock_miou, out[-3000:]
    assert float(stock_miou.group(1)) == round(metrics['mIoU'], 2)

    # --tta: the ADE20K base config's multi-scale + flip pipeline and SegTTAModel.
    _, out = tool('test', SEG_CFG, tmp_path / 'iter_4.pth', '--work-dir', tmp_path / 'tta',
                  '--tta', '--cfg-options', *opts)
    assert 0 <= test_metrics(out)['mIoU'] <= 100
    ran = dumped_config(tmp_path / 'tta', SEG_CFG)
    assert ran.model.type == 'SegTTAModel' and ran.model.module.type == 'EncoderDecoder'
    aug = ran.test_dataloader.dataset.pipeline[1]
    assert aug.type == 'TestTimeAug' and len(aug.transforms[0]) == 6  # scales 0.5 .. 1.75
    # A config without them says what is missing instead of a KeyError.
    rc, out = tool('test', SEG_CFG, tmp_path / 'iter_4.pth', '--work-dir', tmp_path / 'tta',
                   '--tta', '--cfg-options', *opts, 'tta_pipeline=None', expect_ok=False)
    assert rc != 0 and '--tta: the config defines no tta_pipeline' in out, out[-2000:]


def test_dist_train_two_cpu_processes(data, tmp_path):
    # --no-validate: no val loop, so the val data need not exist.
    opts = seg_opts(data, 2, ['model.backbone.init_cfg=None',
                              f'val_dataloader.dataset.data_root={tmp_path / "absent"}'])
    env = dict(ENV, PORT=str(random.randint(29600, 29999)))
    _, out = run(['bash', 'tools/dist_train.sh', SEG_CFG, '2', '--work-dir', tmp_path,
                  '--amp', '--no-validate', '--cfg-options', *opts], env=env)
    assert 'Iter(val)' not in out and 'Iter(train) [2/2]' in out
    assert 'BF16AutocastOptimWrapper' in out  # --amp: bf16 autocast, fp32 gradients over gloo
    for rank in (0, 1):
        assert f'[s2aformer] rank {rank}/2: process group ready (backend gloo, cpu)' in out
        assert f'[s2aformer] rank {rank}/2: training finished at iteration 2' in out
    assert 'GPU number: 2' in out  # the Runner's world size
    assert (tmp_path / 'iter_2.pth').is_file()

    # dist_test.sh: 2 processes evaluate the 4 test images; mmengine's visualizers draw on
    # rank 0 only, which the tools say up front.
    _, out = run(['bash', 'tools/dist_test.sh', SEG_CFG, tmp_path / 'iter_2.pth', '2',
                  '--work-dir', tmp_path / 'test', '--show-dir', tmp_path / 'show',
                  '--out', tmp_path / 'preds', '--cfg-options', *opts], env=env)
    assert 0 <= test_metrics(out)['mIoU'] <= 100
    assert len(list((tmp_path / 'preds').glob('*.png'))) == 4  # all ranks' images
    assert out.count("--show/--show-dir with 2 processes: the libraries' visualizers draw on "
                     'rank 0 only') == 1, out[-3000:]
    assert len(list((tmp_path / 'show').rglob('*.png'))) == 2


# --------------------------------------------------------------------------- detection
def det_opts(data, extra=()):
    ann = data / 'coco' / 'annotations' / 'instances_val2017.json'
    return loader_opts(data / 'coco', extra=[
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        'val_dataloader.dataset.pipeline.1.scale=(128,128)',
        'test_dataloader.dataset.pipeline.1.scale=(128,128)',
        # CocoMetric's ann_file is spelled out from data_root when the base is parsed.
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
        'train_cfg.max_epochs=1', 'model.backbone.init_cfg=None', *extra])


# After two iterations no score passes the configs' 0.05 threshold and CocoMetric
# would return nothing ("results ... empty"); keep every detection instead.
@pytest.mark.parametrize('config,metric_keys,train_args,score_thr', [
    (RETINA_CFG, ['coco/bbox_mAP'], [], 'model.test_cfg.score_thr=0'),
    # --amp on CPU: bf16 autocast, with mmcv nms / roi_align kept in fp32.
    (MASK_CFG, ['coco/bbox_mAP', 'coco/segm_mAP'], ['--amp'], 'model.test_cfg.rcnn.score_thr=0'),
], ids=['retinanet', 'mask-rcnn-amp'])
def test_detection_train_and_test(data, tmp_path, config, metric_keys, train_args, score_thr):
    opts = det_opts(data, [score_thr])
    _, out = tool('train', config, '--work-dir', tmp_path, *train_args, '--cfg-options', *opts)
    if train_args:
        assert 'BF16AutocastOptimWrapper' in out
    show = tmp_path / 'show'
    _, out = tool('test', config, tmp_path / 'epoch_1.pth', '--work-dir', tmp_path,
                  '--show-dir', show, '--out', tmp_path / 'dets.pkl', '--cfg-options', *opts)
    metrics = test_metrics(out)
    for key in metric_keys:
        assert key in metrics and -1 <= metrics[key] <= 1, metrics
    assert (tmp_path / 'dets.pkl').stat().st_size > 0
    assert len(list(show.rglob('*.jpg')) + list(show.rglob('*.png'))) == 4

    rc, out = tool('test', config, tmp_path / 'epoch_1.pth', '--work-dir', tmp_path / 'tta',
                   '--tta', '--cfg-options', *opts, expect_ok=config == RETINA_CFG)
    if config == RETINA_CFG:  # flip TTA, boxes merged by DetTTAModel
        assert 'coco/bbox_mAP' in test_metrics(out)
        ran = dumped_config(tmp_path / 'tta', config)
        assert ran.model.type == 'DetTTAModel' and ran.model.module.type == 'RetinaNet'
        assert ran.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'
    else:  # mmdet cannot merge masks: said before anything is built
        assert rc != 0 and 'does not support instance segmentation' in out, out[-2000:]
        assert 'Load checkpoint from' not in out


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize('state', ['missing', 'empty'])
def test_missing_dataset_is_a_clear_error(tmp_path, state):
    root = tmp_path / 'ade'
    if state == 'empty':
        root.mkdir()
    rc, out = tool('train', SEG_CFG, '--work-dir', tmp_path, '--cfg-options',
                   f'train_dataloader.dataset.data_root={root}', expect_ok=False)
    assert rc != 0
    problem = 'does not exist' if state == 'missing' else 'is empty'
    assert f"Dataset directory '{root}' (train_dataloader.dataset.data_root) {problem}" in out
    assert 'generate_demo_data.py ade20k' in out and 'Traceback' not in out


@pytest.mark.parametrize('script', ['dist_train', 'dist_test'])
def test_refusal_under_torchrun_is_printed_once_and_last(tmp_path, script):
    """tools/dist_*.sh with 2 processes and no data: the refusal comes once, as the last
    line, with a non-zero exit, before torchrun starts any process (no ChildFailedError)."""
    args = [SEG_CFG] + ([tmp_path / 'x.pth'] if script == 'dist_test' else []) + ['2']
    rc, out = run(['bash', f'tools/{script}.sh', *args, '--work-dir', tmp_path, '--cfg-options',
                   *loader_opts(tmp_path / 'absent')], expect_ok=False)
    assert_one_line_error(rc, out, f"Dataset directory '{tmp_path / 'absent'}'")
    assert out.strip().splitlines()[-1].startswith('[s2aformer] ERROR: '), out[-2000:]
    assert 'ChildFailedError' not in out and 'torch.distributed' not in out, out[-2000:]


@pytest.mark.parametrize('kind', ['not-a-checkpoint', 'truncated', 'deploy'])
def test_unusable_checkpoint_through_test_tool_is_a_one_line_error(data, tmp_path, kind):
    path = tmp_path / 'x.pth'
    if kind == 'not-a-checkpoint':
        path.write_text('garbage\n')
        expected = [f"'{path}' is not a PyTorch checkpoint"]
    elif kind == 'truncated':
        torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
        expected = ['corrupt or truncated']
    else:  # as tools/deployment/fuse_checkpoint.py writes it
        torch.save({'state_dict': {}, 'meta': {'s2aformer_deploy': True}}, path)
        expected = ['deploy-form checkpoint', 'load_deploy_model']
    rc, out = tool('test', SEG_CFG, path, '--work-dir', tmp_path / 'w', '--cfg-options',
                   *loader_opts(data / 'ade'), expect_ok=False)
    assert_one_line_error(rc, out, *expected)
    assert 'weights_only' not in out and 'missing keys' not in out


def test_downstream_custom_imports_keep_s2aformer_mm(data, tmp_path):
    """A config inheriting ours with its own custom_imports: the copy in the work dir
    still imports s2aformer_mm, so it runs under the libraries' own tools."""
    config = tmp_path / 'downstream.py'
    config.write_text(f"_base_ = ['{REPO / SEG_CFG}']\ncustom_imports = dict(imports=['json'])\n")
    garbage = tmp_path / 'x.pth'
    garbage.write_text('garbage\n')  # the Runner writes the config, then the check stops it
    tool('test', config, garbage, '--work-dir', tmp_path / 'w', '--cfg-options',
         *loader_opts(data / 'ade'), expect_ok=False)
    assert dumped_config(tmp_path / 'w', config).custom_imports.imports == ['json',
                                                                           's2aformer_mm']


def test_tta_refusals_are_one_line_errors(data, tmp_path):
    ckpt = tmp_path / 'x.pth'  # refused before it is read
    ckpt.write_bytes(b'')
    rc, out = tool('test', CLS_CFG, ckpt, '--tta', '--show-dir', tmp_path / 'show',
                   '--cfg-options', *loader_opts(data / 'imagenet'), expect_ok=False)
    assert_one_line_error(rc, out, "mmpretrain's VisualizationHook cannot draw")
    rc, out = tool('test', MASK_CFG, ckpt, '--tta', '--cfg-options', *det_opts(data),
                   expect_ok=False)
    assert_one_line_error(rc, out, 'does not support instance segmentation (Mask R-CNN)')


def test_missing_evaluator_annotations_and_resume_file(data, tmp_path):
    # data_root alone: CocoMetric's ann_file still names data/coco/annotations/...
    opts = [o for o in det_opts(data) if '_evaluator.ann_file=' not in o]
    ann = data / 'coco' / 'annotations'
    rc, out = tool('train', RETINA_CFG, '--work-dir', tmp_path, '--cfg-options', *opts,
                   expect_ok=False)
    assert_one_line_error(rc, out, '(val_evaluator.ann_file) does not exist',
                          f'--cfg-options val_evaluator.ann_file={ann}/instances_val2017.json')
    rc, out = tool('test', RETINA_CFG, tmp_path / 'x.pth', '--work-dir', tmp_path,
                   '--cfg-options', *opts, expect_ok=False)
    assert_one_line_error(rc, out, '(test_evaluator.ann_file) does not exist')
    # Without validation the val evaluator is not needed: the next check speaks.
    missing = tmp_path / 'nope.pth'
    rc, out = tool('train', RETINA_CFG, '--work-dir', tmp_path, '--no-validate', '--resume',
                   missing, '--cfg-options', *opts, expect_ok=False)
    assert_one_line_error(rc, out, f"--resume '{missing}': no such checkpoint file",
                          '--resume without a path')
    assert '_evaluator.ann_file' not in out


def test_demo_script_refuses_foreign_directories(tmp_path):
    """run_demo.sh deletes only what it wrote: DEMO_ROOT / DEMO_WORK_DIR pointing at a
    directory with other files is refused before anything is removed."""
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'mine.txt').write_text('keep')
    env = dict(ENV, DEMO_ROOT=str(foreign))
    proc = subprocess.run(['bash', 'tools/run_demo.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and f'DEMO_ROOT={foreign} is not empty' in proc.stderr, proc.stderr
    # A complete demo data set (its last file stands for it here) and a foreign work dir.
    data = tmp_path / 'ade20k'
    (data / 'annotations' / 'validation').mkdir(parents=True)
    (data / 'annotations' / 'validation' / 'ADE_val_00000060.png').write_bytes(b'')
    env = dict(ENV, DEMO_ROOT=str(data), DEMO_WORK_DIR=str(foreign))
    proc = subprocess.run(['bash', 'tools/run_demo.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "holds 'mine.txt', which the demo did not write" in \
        proc.stderr, proc.stderr
    assert (foreign / 'mine.txt').read_text() == 'keep'
    assert sorted(p.name for p in foreign.iterdir()) == ['mine.txt']


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='needs a venv made by the set-up')
def test_setup_takes_a_relative_venv_path_from_the_callers_directory():
    """S2A_VENV=.venv-onedl, as the README writes it: a rerun finds everything in place (it
    reinstalled this package when the path was taken relative to another directory)."""
    cwd = REPO.parent
    env = dict(ENV, S2A_VENV=os.path.relpath(sys.prefix, cwd))
    proc = subprocess.run(['bash', str(REPO / 'tools/setup_env.sh')], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [line for line in proc.stdout.splitlines() if line.startswith('[setup')]
    assert len(steps) == 1 and 'environment ready' in steps[0], proc.stdout
    assert f'venv {sys.prefix}' in steps[0]


def test_demo_data_small_size_is_a_usage_error(tmp_path):
    rc, out = tool('data/generate_demo_data', 'ade20k', '--root', tmp_path / 'ade', '--size',
                   '64', '16', expect_ok=False)
    assert rc == 2 and 'at least 32 px a side' in out and 'Traceback' not in out, out
    assert not (tmp_path / 'ade').exists()
