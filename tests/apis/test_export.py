"""ONNX export and ONNX Runtime sessions (s2aformer_mm/apis/export.py)."""

import pytest
import torch

from s2aformer_mm import S2AFormer
from s2aformer_mm.apis import ClassifierLogits, export_onnx, onnxruntime_session
from s2aformer_mm.models.reparam import switch_to_deploy
from s2aformer_mm.testing import TINY_ARCH, needs_onnx, paper_classifier, randomise_norms


@needs_onnx
@pytest.mark.parametrize('what, batch', [('backbone', 2), ('classifier', 1)])
def test_onnx_dynamic_axes_match(tmp_path, what, batch):
    # batch 1: torch.export specialises size-1 dimensions (export_onnx traces at 2).
    if what == 'backbone':
        net = switch_to_deploy(randomise_norms(S2AFormer(TINY_ARCH, out_indices=(0, 1, 2, 3))))
    else:
        net = ClassifierLogits(switch_to_deploy(paper_classifier(TINY_ARCH)))
    path = export_onnx(net, str(tmp_path / f'{what}.onnx'), torch.randn(batch, 3, 64, 96))
    sess = onnxruntime_session(path)
    for shape in [(2, 3, 64, 96), (3, 3, 97, 64), (1, 3, 128, 160)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x)
        ref = ref if isinstance(ref, tuple) else (ref, )
        outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert len(outs) == len(ref)
        for o, r in zip(outs, ref):
            assert tuple(o.shape) == tuple(r.shape)
            torch.testing.assert_close(torch.from_numpy(o), r, atol=1e-4, rtol=1e-4)


