"""``tools/test.py --out``: pickle the predictions without the bulky logits."""
from mmengine.evaluator import DumpResults
from mmengine.registry import METRICS


@METRICS.register_module()
class DumpPredictions(DumpResults):
    """mmengine's ``DumpResults`` minus ``seg_logits``.

    mmseg data samples carry the full ``C x H x W`` float logits (150 x H x W for
    ADE20K, ~15 MB per 128x128 image); ``pred_sem_seg`` holds the prediction.
    """

    drop_keys = ('seg_logits', )

    def process(self, data_batch, predictions) -> None:
        predictions = [{k: v for k, v in p.items() if k not in self.drop_keys}
                       if isinstance(p, dict) else p for p in predictions]
        super().process(data_batch, predictions)
