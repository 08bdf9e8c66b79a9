"""User-level APIs above the model and the libraries' registrations (as
``mmpretrain.apis`` / ``mmseg.apis``): build a config's model, load a deploy
checkpoint, export to ONNX and run it in ONNX Runtime.

Layering: :mod:`s2aformer_mm.apis` imports :mod:`s2aformer_mm.models`,
:mod:`s2aformer_mm.integrations` and :mod:`s2aformer_mm.checkpoint`; nothing in the
package imports it. The deploy-form folds themselves (``switch_to_deploy``, ...) are
part of the model: :mod:`s2aformer_mm.models.reparam`.
"""
from .export import ONNX_OPSET, ClassifierLogits, export_onnx, onnxruntime_session
from .model import build_model_from_config, load_deploy_model

__all__ = ['build_model_from_config', 'load_deploy_model', 'ONNX_OPSET', 'ClassifierLogits',
           'export_onnx', 'onnxruntime_session']
