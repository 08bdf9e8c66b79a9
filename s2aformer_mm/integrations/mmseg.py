"""Registers :class:`S2AFormer` in mmsegmentation's ``MODELS`` (scope ``mmseg``), and lets
mmengine find mmsegmentation's configs (``mmseg::`` bases) on either OpenMMLab line."""
from mmengine.config import utils as config_utils
from mmseg.registry import MODELS

from ..compat import LINES, installed_line
from ..models import S2AFormer

MODELS.register_module(module=S2AFormer)

# mmengine resolves an ``mmseg::`` base through the distribution that its MODULE2PACKAGE
# table names for the scope, 'mmsegmentation'. On the maintained line (onedl-mmengine
# 0.10.12 with onedl-mmsegmentation 1.4.2) that distribution is 'onedl-mmsegmentation', so
# every config with an ``mmseg::`` base failed with "mmsegmentation is not installed" (mmdet
# and mmpretrain resolve: mmengine falls back to their import names). Name the installed
# line's distribution (a no-op on the upstream line). Applies from ``import s2aformer_mm``
# on, i.e. to configs parsed after it, as in this project's tools.
config_utils.MODULE2PACKAGE['mmseg'] = LINES[installed_line()]['mmseg'][0]
