"""``tools/test.py``: ``--out`` (prediction PNGs for mmseg, pickled predictions for
mmdet / mmpretrain) and the metrics report."""
import glob
import json
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.evaluator import DumpResults
from mmengine.logging import print_log
from mmengine.registry import METRICS

from .errors import UsageError


@METRICS.register_module()
class DumpPredictions(DumpResults):
    """mmengine's ``DumpResults`` minus ``seg_logits``.

    mmseg data samples carry the full ``C x H x W`` float logits (150 x H x W for
    ADE20K, ~15 MB per 128x128 image); ``pred_sem_seg`` holds the prediction.

    Args:
        out_file_path (str): The ``.pkl`` file to write.
        collect_device (str): mmengine's ``'cpu'`` or ``'gpu'``. Defaults to ``'cpu'``.
    """

    drop_keys = ('seg_logits', )

    def process(self, data_batch, predictions) -> None:
        predictions = [{k: v for k, v in p.items() if k not in self.drop_keys}
                       if isinstance(p, dict) else p for p in predictions]
        super().process(data_batch, predictions)


def add_prediction_dump(cfg: Config, scope: str, out: str) -> None:
    """``--out``, as each library's own ``tools/test.py`` reads it.

    * mmseg: ``--out DIR`` is a directory of prediction PNGs, one per test image named
      after it: ``output_dir`` (and ``keep_results``) of ``test_evaluator``, whose
      ``IoUMetric`` writes them (class indices; +1 under ``reduce_zero_label``, the
      ADE20K submission format). mmseg's ``tools/analysis_tools/confusion_matrix.py``
      reads that directory. The directory is created here, by every process, because
      the metric creates it on rank 0 only while every rank writes its share.
    * mmdet / mmpretrain: ``--out preds.pkl`` pickles the predictions (mmdet's
      ``DumpDetResults``; for mmpretrain :class:`DumpPredictions`).

    A name meant for the other form is refused with the reason.
    """
    pickled = out.endswith(('.pkl', '.pickle'))
    if scope == 'mmseg':
        if pickled or osp.isfile(out):
            raise UsageError(
                f'--out {out!r}: for an mmseg config --out names a directory for the '
                f"prediction PNGs (as mmseg's tools/test.py does), not a .pkl file; "
                f'e.g. --out {osp.splitext(out)[0] if pickled else out + "_preds"}.')
        os.makedirs(out, exist_ok=True)
        evaluators = cfg.test_evaluator
        for evaluator in (evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]):
            evaluator['output_dir'] = out
            evaluator['keep_results'] = True
        print_log(f'--out: prediction PNGs go to {osp.abspath(out)}', logger='current')
        return
    if not pickled:
        raise UsageError(f"--out {out!r}: for an {scope} config the predictions are pickled "
                         f"(as {scope}'s tools/test.py does); use a .pkl name.")
    dump = dict(type='DumpDetResults' if scope == 'mmdet' else 'mmengine.DumpPredictions',
                out_file_path=out)
    evaluators = cfg.test_evaluator
    cfg.test_evaluator = (list(evaluators) if isinstance(evaluators, (list, tuple))
                          else [evaluators]) + [dump]


def report_metrics(metrics: dict, work_dir: str, show_dir: Optional[str] = None) -> dict:
    """Print the metrics as ``[s2aformer] test metrics: {json}``, write them to
    ``<work_dir>/test_metrics.json`` and say where ``--show-dir`` pictures went."""
    metrics = {k: (float(v) if isinstance(v, (int, float)) or hasattr(v, 'item') else v)
               for k, v in metrics.items()}
    with open(osp.join(work_dir, 'test_metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1, default=str)
    print(f'[s2aformer] test metrics: {json.dumps(metrics, default=str)}', flush=True)
    if show_dir:
        pics = [p for p in glob.glob(osp.join(osp.abspath(show_dir), '**', '*'), recursive=True)
                if p.lower().endswith(('.png', '.jpg', '.jpeg'))]
        dirs = sorted({osp.dirname(p) for p in pics})
        print(f'[s2aformer] {len(pics)} prediction pictures written to '
              f'{", ".join(dirs) or show_dir}', flush=True)
    return metrics
