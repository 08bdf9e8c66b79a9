"""User-level APIs above the model and the libraries' registrations (as
``mmpretrain.apis`` / ``mmseg.apis``): build a config's model, load a deploy
checkpoint, export to ONNX and run it in ONNX Runtime.

Layering: :mod:`s2aformer_mm.apis` imports :mod:`s2aformer_mm.models`,
:mod:`s2aformer_mm.integrations` and :mod:`s2aformer_mm.checkpoint`; nothing in the
package imports it. The deploy-form folds themselves (``switch_to_deploy``, ...) are
part of the model: :mod:`s2aformer_mm.models.reparam`.
"""
from .configs import config_path, configs_dir
from .export import ONNX_OPSET, ClassifierLogits, export_onnx, onnxruntime_session
from .inference import (IMAGE_EXTENSIONS, build_inferencer, collect_images, infer_images,
                        load_inference_model, prebuilt_model_inferencer)
from .model import build_model_from_config, load_deploy_model, save_initial_checkpoint
from .model_index import model_index_path, register_model_index

__all__ = ['build_model_from_config', 'load_deploy_model', 'save_initial_checkpoint',
           'ONNX_OPSET', 'ClassifierLogits', 'export_onnx', 'onnxruntime_session',
           'IMAGE_EXTENSIONS', 'collect_images', 'load_inference_model',
           'prebuilt_model_inferencer', 'build_inferencer', 'infer_images',
           'model_index_path', 'register_model_index', 'configs_dir', 'config_path']
