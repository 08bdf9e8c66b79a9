"""Inference-time re-parameterisation ("deploy form") helpers.

Every fold here is an exact algebraic identity for a network in eval mode (BN uses
its running statistics, so it is a per-channel affine map ``y = a * x + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - mean * a``); the results differ
from the training form only by floating-point rounding.

* :func:`fold_bn_into_conv` -- ``BN(conv(x))``: BN *after* a conv folds into the
  conv's output side (mmcv's ``_fuse_conv_bn``).
* :func:`fold_affine_into_conv_input` -- ``conv(a * x + b)``: an affine map
  *before* a conv folds into the conv's input side **only if the conv has no
  padding** (1x1 convs, the 2x2/stride-2 patch embedding, the ``sr x sr``
  reduction conv). With zero padding the border would see ``b`` instead of 0 in
  the folded model, so a BN that precedes a padded 3x3 conv (stem BN1/BN2, the
  FFN's first BN before its depth-wise conv) is *not* folded.
* :func:`fold_affine_into_linear_input` -- ``Linear(a * x + b)``.
* :func:`fold_identity_into_dwconv` -- ``x + dw(x)`` equals ``dw'(x)`` with 1
  added to the centre tap (RepVGG-style; exact with zero padding because the
  centre tap always reads ``x`` itself).
* :func:`merge_linears` -- ``(l1(x) + l2(x)) / 2`` is one linear layer.
* :func:`fuse_conv_act` -- ``act(conv(x))`` becomes one :class:`FusedConvAct`
  (oneDNN convolution with the activation as a post-op on CPU; same arithmetic).

Do **not** run ``mmcv.cnn.fuse_conv_bn`` on S2AFormer: it fuses a BN into the last
conv seen among a module's children even when an activation sits between them,
so it would fold the stem's and the FFN's ``Conv -> GELU -> BN`` into wrong
weights. Use :func:`switch_to_deploy` (or ``S2AFormer.switch_to_deploy()``).
"""
from typing import Tuple

import torch
import torch.nn as nn
from mmcv.cnn.utils.fuse_conv_bn import _fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['bn_affine', 'fold_bn_into_conv', 'fold_affine_into_conv_input',
           'fold_affine_into_linear_input', 'fold_identity_into_dwconv', 'merge_linears',
           'FusedConvAct', 'fuse_conv_act', 'count_batchnorms', 'switch_to_deploy',
           'is_deployed']


def bn_affine(bn: _BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BN as ``(a, b)`` with ``BN(x) = a * x + b`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics '
                         '(track_running_stats=False): it is not affine in eval mode')
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -bn.running_mean * a
    if bn.bias is not None:
        b = b + bn.bias
    return a.detach(), b.detach()


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """``BN(conv(x))`` -> ``conv'(x)`` in place (mmcv's fold); returns ``conv``."""
    return _fuse_conv_bn(conv, bn)


def _check_unpadded(conv: nn.Conv2d) -> None:
    pad = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, )
    if isinstance(conv.padding, str) or any(p != 0 for p in pad):
        raise ValueError(
            f'cannot fold an affine map into the input of {conv}: with padding the border '
            'pixels would see the affine offset instead of zeros (not exact).')


@torch.no_grad()
def fold_affine_into_conv_input(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> None:
    """``conv(a * x + b)`` -> ``conv'(x)`` in place, per input channel; the conv must
    have no padding (see the module docstring). Handles grouped/depth-wise convs."""
    _check_unpadded(conv)
    w = conv.weight
    out_c, cin_g = w.shape[:2]
    g = conv.groups
    a_ = a.view(g, 1, cin_g).expand(g, out_c // g, cin_g).reshape(out_c, cin_g, 1, 1)
    b_ = b.view(g, 1, cin_g).expand(g, out_c // g, cin_g).reshape(out_c, cin_g, 1, 1)
    extra = (w * b_).sum((1, 2, 3))
    if conv.bias is None:
        conv.bias = nn.Parameter(extra)
    else:
        conv.bias.add_(extra)
    w.mul_(a_)


@torch.no_grad()
def fold_affine_into_linear_input(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> None:
    """``Linear(a * x + b)`` -> ``Linear'(x)`` in place."""
    extra = linear.weight @ b
    if linear.bias is None:
        linear.bias = nn.Parameter(extra)
    else:
        linear.bias.add_(extra)
    linear.weight.mul_(a)


@torch.no_grad()
def fold_identity_into_dwconv(conv: nn.Conv2d) -> None:
    """``x + dw(x)`` -> ``dw'(x)`` in place: +1 on the centre tap of a depth-wise
    conv with odd kernel, stride 1 and 'same' zero padding."""
    k = conv.kernel_size
    if not (conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1)
            and all(s % 2 == 1 for s in k) and conv.padding == (k[0] // 2, k[1] // 2)
            and conv.padding_mode == 'zeros'):
        raise ValueError(f'identity can only be folded into a stride-1 same-padded depth-wise '
                         f'conv with an odd kernel, got {conv}')
    conv.weight[:, 0, k[0] // 2, k[1] // 2] += 1


@torch.no_grad()
def merge_linears(l1: nn.Linear, l2: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``(l1(x) + l2(x)) / 2``."""
    if l1.weight.shape != l2.weight.shape:
        raise ValueError('merge_linears needs two linears of the same shape')
    out = nn.Linear(l1.in_features, l1.out_features, bias=True).to(l1.weight)
    out.weight.copy_((l1.weight + l2.weight) / 2)
    zero = torch.zeros_like(out.bias)
    b1 = l1.bias if l1.bias is not None else zero
    b2 = l2.bias if l2.bias is not None else zero
    out.bias.copy_((b1 + b2) / 2)
    return out


_HAS_ONEDNN_CONV_POST_OPS = (torch.backends.mkldnn.is_available()
                             and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def _onednn_post_op(conv: nn.Module, act: nn.Module):
    """``(attr, algorithm)`` of ``act`` as a oneDNN post-op of the zero-padded
    ``Conv2d`` ``conv``, or None where they cannot be fused."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) \
            or conv.padding_mode != 'zeros':
        return None
    if isinstance(act, nn.GELU):
        return 'gelu', act.approximate
    if isinstance(act, nn.ReLU):
        return 'relu', ''
    return None


def in_exported_graph() -> bool:
    """Inside torch.export, an ONNX export, a jit trace or script: graphs whose
    consumers (ONNX, TorchScript, FLOP counters) know only standard ops."""
    return (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def in_eager_mode() -> bool:
    """Neither compiled nor :func:`in_exported_graph`. ``is_compiling`` goes first:
    dynamo must not trace the other checks."""
    return not torch.compiler.is_compiling() and not in_exported_graph()


def _onednn_eager(x: torch.Tensor) -> bool:
    """Eager fp32 on a CPU with oneDNN."""
    return (in_eager_mode() and x.device.type == 'cpu' and x.dtype == torch.float32
            and _HAS_ONEDNN_CONV_POST_OPS and torch.backends.mkldnn.enabled)


class FusedConvAct(nn.Module):
    """``act(conv(x))`` for inference, in one pass over memory on CPU.

    On CPU (fp32, eager) it calls oneDNN's convolution with the activation as a
    post-op (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile``'s
    CPU backend emits): the activation runs on each output tile while it is in
    cache instead of in a second sweep over the map. For the FFN's 48->192 1x1
    conv at 56x56 (batch 16) that is 2.8 ms instead of 6.5 ms. Elsewhere (GPU,
    reduced precision, traced/compiled/exported graphs) it runs the two modules.
    Exact up to rounding either way.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        post_op = _onednn_post_op(conv, act)
        if post_op is None:
            raise ValueError(f'FusedConvAct fuses a zero-padded Conv2d with GELU or ReLU, '
                             f'got {conv} and {act}')
        self.conv, self.act = conv, act
        self._attr, self._algorithm = post_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        # The fused op has no autograd formula: with gradients wanted, the plain ops.
        if _onednn_eager(x) and not (torch.is_grad_enabled()
                                     and (x.requires_grad or c.weight.requires_grad)):
            return torch.ops.mkldnn._convolution_pointwise(
                x, c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation),
                c.groups, self._attr, [], self._algorithm)
        return self.act(c(x))


def fuse_conv_act(conv: nn.Module, act: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """``(FusedConvAct(conv, act), Identity)`` where oneDNN can fuse ``act``,
    else ``(conv, act)`` unchanged; assign the pair back in place of the two."""
    if _onednn_post_op(conv, act) is not None:
        return FusedConvAct(conv, act), nn.Identity()
    return conv, act


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def is_deployed(model: nn.Module) -> bool:
    """True if every module of ``model`` that has a deploy form is in it."""
    return all(getattr(m, 'deploy', True) for m in model.modules()
               if hasattr(m, 'switch_to_deploy'))


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and switch every sub-module that has a deploy form
    (``S2AFormer``, ``S2AFormerClsHead``, ...) to it, in place; returns ``model``.

    Works on a bare backbone, an mmpretrain ``ImageClassifier``, or an mmseg/mmdet
    model holding an S2AFormer backbone (their other modules are left as they are).
    The result is inference-only: its ``train()`` raises.
    """
    model.eval()
    for m in list(model.modules()):
        if hasattr(m, 'switch_to_deploy') and not getattr(m, 'deploy', False):
            m.switch_to_deploy()
    return model


# --------------------------------------------------------------------------- ONNX
#: Opset the exporter targets (torch's dynamo-based ``torch.onnx.export``). 20 is the
#: first with a ``Gelu`` op: at 18 GELU is exported as Div/Erf/Add/Mul, which ONNX
#: Runtime 1.32 does not fuse back, and S2AFormer-T ran 1.6x slower in ORT.
ONNX_OPSET = 20


class ClassifierLogits(nn.Module):
    """``image tensor -> logits`` of an mmpretrain ``ImageClassifier`` (the data
    preprocessor -- mean/std normalisation -- is *not* part of the graph)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x, mode='tensor')


def export_onnx(model: nn.Module, path: str, example: torch.Tensor, dynamic: bool = True,
                opset: int = ONNX_OPSET, verbose: bool = False) -> str:
    """Export ``model`` (``NCHW tensor -> tensor(s)``) to ONNX with torch's dynamo
    exporter (needs ``onnx`` and ``onnxscript``); batch, height and width are
    dynamic unless ``dynamic=False``. Returns ``path``.

    Inputs must be at least 32 px a side (the network's total stride); the
    exported graph has no such check.
    """
    import importlib.util
    for pkg in ('onnx', 'onnxscript'):
        if importlib.util.find_spec(pkg) is None:
            raise ImportError(f'ONNX export needs {pkg!r}: pip install onnx onnxscript onnxruntime '
                              '(or run bash tools/setup_env.sh)')
    import logging
    # torch.export logs a sympy traceback for the floor-division guards of the
    # reductions ("cannot be solved using solve_univariate_inequality"); harmless.
    logging.getLogger('torch.fx.experimental.symbolic_shapes').setLevel(logging.ERROR)
    model.eval()
    dynamic_shapes = None
    if dynamic:
        if example.shape[0] == 1:
            # torch.export specialises size-1 dimensions: traced at batch 1, the graph
            # is only valid for batch 1 and export fails against the dynamic range.
            example = example.expand(2, *example.shape[1:])
        dims = {0: torch.export.Dim('batch', min=1, max=4096),
                2: torch.export.Dim('height', min=32, max=16384),
                3: torch.export.Dim('width', min=32, max=16384)}
        dynamic_shapes = ({0: dims[0], 2: dims[2], 3: dims[3]}, )
    with torch.no_grad():
        torch.onnx.export(model, (example, ), path, dynamo=True, opset_version=opset,
                          input_names=['input'], dynamic_shapes=dynamic_shapes,
                          external_data=False, verbose=verbose, report=False)
    return path


def onnxruntime_session(path: str, num_threads: int = 0):
    """A CPU ONNX Runtime session (``num_threads=0``: ORT's default)."""
    import importlib.util
    if importlib.util.find_spec('onnxruntime') is None:
        raise ImportError('ONNX Runtime is not installed: pip install onnxruntime')
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


# --------------------------------------------------------------------------- configs
def build_model_from_config(config) -> nn.Module:
    """Build ``cfg.model`` (a path or an mmengine ``Config``) in the config's
    ``default_scope`` (mmpretrain / mmseg / mmdet); training form, eval mode."""
    import importlib
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from .integrations import require
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    scope = cfg.get('default_scope')
    if scope is None:
        raise ValueError('the config has no default_scope (mmpretrain, mmseg or mmdet)')
    require(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = cfg.model.copy()
    if scope == 'mmseg':
        model_cfg.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(model_cfg)
    return model.eval()


def load_deploy_model(config, checkpoint: str) -> nn.Module:
    """Build ``config``'s model, switch it to the deploy form and load a deploy
    checkpoint written by ``tools/deployment/fuse_checkpoint.py`` (strict).

    Like the libraries' ``init_model`` / ``init_detector``, the model carries ``cfg``
    and the checkpoint's ``dataset_meta``, so mmseg's ``inference_model`` and mmdet's
    ``inference_detector`` accept it."""
    from mmengine.config import Config

    from .checkpoint import is_deploy_checkpoint, safe_load
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model = switch_to_deploy(build_model_from_config(cfg))
    ckpt = safe_load(checkpoint)
    if not is_deploy_checkpoint(ckpt):
        raise ValueError(f'{checkpoint} is not a deploy-form checkpoint (no meta.s2aformer_deploy); '
                         'load it into the training-form model and call switch_to_deploy().')
    model.load_state_dict(ckpt['state_dict'], strict=True)
    model.cfg = cfg
    if ckpt['meta'].get('dataset_meta') is not None:
        model.dataset_meta = ckpt['meta']['dataset_meta']
    return model
