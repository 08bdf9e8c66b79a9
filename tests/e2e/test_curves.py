"""Curves of a run: tools/analysis/plot_curves.py on mmengine's scalar log, and the one-line
config switch to TensorBoard (README "Training and testing")."""
import glob
import re

from PIL import Image

from s2aformer_mm.testing import REPO, assert_one_line_error, loader_opts, tool

DEMO_CFG = REPO / 'configs/demo/fpn_s2aformer_mini_ade20k_demo.py'
# README: the switch, one line in a config that inherits ours
TENSORBOARD = ("visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), "
               "dict(type='TensorboardVisBackend')])")


def test_tensorboard_switch_and_curves(data, tmp_path):
    assert TENSORBOARD in (REPO / 'README.md').read_text()
    config = tmp_path / 'tensorboard.py'
    config.write_text(f'_base_ = [{str(DEMO_CFG)!r}]\n{TENSORBOARD}\n')
    work = tmp_path / 'work'
    tool('train', config, '--work-dir', work, '--cfg-options',
         *loader_opts(data / 'ade', extra=['train_cfg.max_iters=4', 'train_cfg.val_interval=2',
                                           'param_scheduler=[]']))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events, ) = glob.glob(str(work / '*' / 'vis_data' / 'events.out.tfevents.*'))
    board = EventAccumulator(events)
    board.Reload()
    assert [e.step for e in board.Scalars('loss')] == [1, 2, 3, 4]
    assert [e.step for e in board.Scalars('mIoU')] == [2, 4]

    _, out = tool('analysis/plot_curves', work)
    path = re.search(r'curves \(4 training, 2 validation points\): (\S+)', out).group(1)
    assert Image.open(path).size == (840, 480)
    rc, out = tool('analysis/plot_curves', work, '--metric', 'accuracy/top1', expect_ok=False)
    assert_one_line_error(rc, out, "--metric 'accuracy/top1' is not in the validation log",
                          'mIoU')
    rc, out = tool('analysis/plot_curves', tmp_path, expect_ok=False)
    assert_one_line_error(rc, out, 'No scalar log in')
