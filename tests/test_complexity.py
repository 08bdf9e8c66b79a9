"""Counting parity with docs/architecture.md / paper Table II."""
import runpy

import pytest
import torch
from mmengine.registry import DefaultScope

from s2aformer_mm import S2AFormer
from s2aformer_mm.complexity import (PAPER, REFERENCE, backbone_macs, count_macs,
                                     count_params, rel_err)
from s2aformer_mm.models.s2aformer import StripSelfAttention
from s2aformer_mm.testing import REPO

GET_FLOPS = REPO / 'tools' / 'analysis' / 'get_flops.py'
FPN_MINI = str(REPO / 'configs' / 'mmseg' / 'fpn_s2aformer_mini_ade20k.py')


def _classifier(arch):
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=1000,
                      in_channels=S2AFormer.arch_zoo[arch]['channels'][-1])))


class _Logits(torch.nn.Module):
    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x):
        return self.clf.head(self.clf.backbone(x))


@pytest.mark.parametrize('arch', list(REFERENCE))
def test_params_and_macs(arch):
    clf = _classifier(arch)
    ref = REFERENCE[arch]
    assert rel_err(count_params(clf) / 1e6, ref['params']) <= 0.002
    assert rel_err(count_params(clf) / 1e6, PAPER[arch]['params']) <= 0.002
    assert rel_err(count_params(clf.backbone) / 1e6, ref['backbone']) <= 0.002
    macs = backbone_macs(_Logits(clf))
    assert rel_err(macs['paper'] / 1e9, PAPER[arch]['gmacs']) <= 0.01
    assert rel_err(macs['paper'] / 1e9, ref['gmacs_paper']) <= 0.01
    assert rel_err(macs['honest'] / 1e9, ref['gmacs_honest']) <= 0.01


def test_attention_macs_counted_in_both_implementations():
    """The fused SDPA op must not be counted as zero (mmengine has no handle)."""
    attn = StripSelfAttention(32, 1, sr_ratio=8).eval()
    x = torch.randn(1, 32, 56, 56)
    n, ns = 56 * 56, 7 * 7
    counts = {}
    for fused in (True, False):
        attn.fused = fused
        counts[fused] = {c: count_macs(attn, x, c) for c in ('honest', 'paper')}
    # Fused SDPA is counted by our handle, the literal formula by the matmul handle.
    assert counts[True]['honest'] == counts[False]['honest']
    # SSA has no element-wise op in the fused path: paper = honest - the two matmuls.
    assert counts[True]['honest'] - counts[True]['paper'] == n * ns * (1 + 32)


def test_get_flops_cli_messages(capsys):
    """Help states the default shapes; --shape below 32 is a usage error (the labels and
    the reference line: tests/test_configs.py::test_get_flops_tool)."""
    tool = runpy.run_path(str(GET_FLOPS))
    with pytest.raises(SystemExit):
        tool['parse_args'](['--help'])
    usage = capsys.readouterr().out
    assert '512 512 for mmseg' in usage and 'see above' not in usage
    with pytest.raises(SystemExit) as exc:
        tool['main']([FPN_MINI, '--shape', '16', '16'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and '--shape 16 16' in err and 'at least 32x32' in err, err
