"""``tools/test.py --show`` / ``--show-dir``: the libraries' visualisation hooks, on."""
import copy
from typing import Optional

from mmengine.config import Config

from .errors import UsageError


def enable_visualization(cfg: Config, scope: str, show_dir: Optional[str], show: bool,
                         wait_time: float) -> None:
    """Turn on the library's visualisation hook so test predictions are drawn."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise UsageError('--show/--show-dir need default_hooks.visualization in the config '
                         '(VisualizationHook / SegVisualizationHook / DetVisualizationHook).')
    hook.update(show=show, wait_time=wait_time)
    if scope == 'mmpretrain':  # VisualizationHook(enable, out_dir)
        hook.update(enable=True, interval=1, out_dir=show_dir)
    elif scope == 'mmseg':  # SegVisualizationHook draws through the visualizer's backends
        hook.update(draw=True, interval=1)
        if show_dir:
            cfg.visualizer['save_dir'] = show_dir
        # The hook reads runner.iter, which builds the train loop and its data set even
        # in test mode: give it the test data so testing never needs the training split.
        cfg.train_dataloader = copy.deepcopy(cfg.test_dataloader)
    else:  # mmdet DetVisualizationHook(test_out_dir)
        hook.update(draw=True, interval=1, test_out_dir=show_dir)
