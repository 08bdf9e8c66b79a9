"""ONNX export of our models and ONNX Runtime sessions (``tools/deployment/export_onnx.py``,
the benchmark). ``onnx``, ``onnxscript`` and ``onnxruntime`` are optional extras
(``pip install -e .[deploy]``): they are looked up when a function needs them."""
import importlib.util
import logging

import torch
import torch.nn as nn

__all__ = ['ONNX_OPSET', 'ClassifierLogits', 'export_onnx', 'onnxruntime_session']

#: Opset the exporter targets (torch's dynamo-based ``torch.onnx.export``). 20 is the
#: first with a ``Gelu`` op: at 18 GELU is exported as Div/Erf/Add/Mul, which ONNX
#: Runtime 1.32 does not fuse back, and S2AFormer-T ran 1.6x slower in ORT.
ONNX_OPSET = 20


class ClassifierLogits(nn.Module):
    """``image tensor -> logits`` of an mmpretrain ``ImageClassifier`` (the data
    preprocessor -- mean/std normalisation -- is *not* part of the graph).

    Args:
        classifier (nn.Module): An mmpretrain ``ImageClassifier`` (training or
            deploy form); its forward is called with ``mode='tensor'``.
    """

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
    for pkg in ('onnx', 'onnxscript'):
        if importlib.util.find_spec(pkg) is None:
            raise ImportError(f'ONNX export needs {pkg!r}: pip install onnx onnxscript onnxruntime '
                              '(or run bash tools/setup_env.sh)')
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
    if importlib.util.find_spec('onnxruntime') is None:
        raise ImportError('ONNX Runtime is not installed: pip install onnxruntime')
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
