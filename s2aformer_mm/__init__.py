"""S2AFormer for OpenMMLab: one backbone, registered in mmpretrain, mmseg and mmdet.

Importing the package (configs do it through ``custom_imports``) checks torch and the
OpenMMLab line (upstream or onedl: :mod:`s2aformer_mm.compat`) with its mmengine and mmcv,
allowlists the globals Runner checkpoints need under ``weights_only=True``, registers
the models in every installed OpenMMLab library and the tools' runner parts (hooks,
wrappers, metrics: :mod:`s2aformer_mm.engine`), so that a config the tools wrote into a
work dir also runs under the libraries' own tools.
"""
from .compat import check_stack, check_torch

check_torch()
check_stack()

from .checkpoint import register_safe_globals, route_mmengine_local_loads  # noqa: E402
from .integrations import MISSING, REGISTERED, register_all, require  # noqa: E402
from .models import S2AFormer  # noqa: E402
from . import engine  # noqa: E402,F401  (registers SafeCheckpointHook, IterationSeedHook, ...)

__version__ = '0.1.0'

register_safe_globals()
route_mmengine_local_loads()
register_all()

__all__ = ['S2AFormer', 'require', 'REGISTERED', 'MISSING', '__version__']
