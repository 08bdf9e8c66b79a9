"""Plot a run's training loss and validation metric against the iteration.

    python tools/analysis/plot_curves.py WORK_DIR [--metric mIoU] [--out curves.png]

Reads mmengine's scalar log of the newest run in WORK_DIR
(``<WORK_DIR>/<timestamp>/vis_data/scalars.json``, written by every Runner with the
default ``LocalVisBackend``); a resumed run's earlier parts are read too, so the
curve covers the whole training. The libraries' ``analyze_logs.py`` read the same
file (docs/library_tools.md). Prints the path of the PNG it writes.
"""
import argparse
import json
import os.path as osp
from glob import glob

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from s2aformer_mm.engine import USER_ERRORS, InputNotFoundError, UsageError  # noqa: E402


def read_scalars(work_dir: str):
    """(train records, val records) of every run in ``work_dir``, oldest first; a record
    of a later run replaces one of the same iteration (a resumed run repeats some)."""
    files = sorted(glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise InputNotFoundError(f'No scalar log in {work_dir!r} (expected '
                                 f'<work_dir>/<timestamp>/vis_data/scalars.json): is it the '
                                 f'--work-dir of a training run?')
    train, val = {}, {}
    for path in files:
        with open(path) as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if 'loss' in record and 'iter' in record:
                    train[record['iter']] = record
                elif 'step' in record:   # validation: logged with the training step
                    val[record['step']] = record
    return [train[i] for i in sorted(train)], [val[s] for s in sorted(val)]


def plot(train, val, metric: str, out: str, title: str) -> str:
    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=120)
    loss_ax.plot([r['iter'] for r in train], [r['loss'] for r in train], color='tab:blue',
                 label='training loss')
    loss_ax.set_xlabel('iteration')
    loss_ax.set_ylabel('training loss', color='tab:blue')
    points = [(r['step'], r[metric]) for r in val if metric in r]
    if points:
        metric_ax = loss_ax.twinx()
        metric_ax.plot(*zip(*points), 'o-', color='tab:red', label=f'validation {metric}')
        metric_ax.set_ylabel(f'validation {metric}', color='tab:red')
    loss_ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description='Plot training loss and a validation metric')
    parser.add_argument('work_dir', help='the --work-dir of a training run')
    parser.add_argument('--metric', default='mIoU',
                        help='validation metric to plot (e.g. mIoU, accuracy/top1, coco/bbox_mAP)')
    parser.add_argument('--out', help='PNG to write (default: <work_dir>/curves.png)')
    args = parser.parse_args(argv)
    train, val = read_scalars(args.work_dir)
    if not train:
        raise UsageError(f'{args.work_dir!r}: the scalar log holds no training loss yet.')
    if val and not any(args.metric in r for r in val):
        names = sorted({k for r in val for k in r if k not in ('step', 'data_time', 'time')})
        raise UsageError(f'--metric {args.metric!r} is not in the validation log; it has '
                         f'{", ".join(names)}.')
    out = plot(train, val, args.metric, args.out or osp.join(args.work_dir, 'curves.png'),
               osp.basename(osp.normpath(args.work_dir)))
    print(f'[s2aformer] curves ({len(train)} training, {len(val)} validation points): {out}')
    return out


if __name__ == '__main__':
    try:
        main()
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None
