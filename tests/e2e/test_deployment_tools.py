"""tools/deployment/: ONNX export and deploy checkpoints, and deploy-form models in the
libraries' inference APIs."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from s2aformer_mm import S2AFormer
from s2aformer_mm.apis import (ClassifierLogits, build_model_from_config, load_deploy_model,
                              onnxruntime_session, save_initial_checkpoint)
from s2aformer_mm.checkpoint import CheckpointMismatchError
from s2aformer_mm.testing import (REPO, assert_all_close, needs_onnx, paper_classifier,
                                  randomise_norms)

CLS_CFG = 'configs/mmpretrain/s2aformer_mini_4xb256_in1k.py'


def _deploy_tool(script, *args, ok=True):
    proc = subprocess.run([sys.executable, f'tools/deployment/{script}.py', *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == ok, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout if ok else proc.stderr


@needs_onnx
def test_export_tool_defaults(tmp_path):
    # The tool's defaults (batch 1, dynamic axes), at 64x64 to keep it short.
    out = _deploy_tool('export_onnx', tmp_path / 'mini.onnx', '--arch', 'mini', '--classifier',
                       '--shape', '64', '64')
    errors = [float(e) for e in re.findall(r'max abs error per output ([-+.e\d]+)', out)]
    assert len(errors) == 2 and max(errors) < 1e-4, out
    assert (tmp_path / 'mini.onnx').stat().st_size > 1e6


@needs_onnx
def test_export_tool_backbone_of_dense_checkpoint(tmp_path):
    """A RetinaNet-style checkpoint (backbone.* with output norms of stages 1-3, neck,
    head): the graph returns what the neck received."""
    backbone = randomise_norms(S2AFormer('mini', out_indices=(1, 2, 3), out_norm=True)).eval()
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state.update({'neck.lateral_convs.0.conv.weight': torch.zeros(8, 64, 1, 1),
                  'bbox_head.retina_cls.bias': torch.zeros(9)})
    torch.save({'state_dict': state, 'meta': {}}, tmp_path / 'retina.pth')
    _deploy_tool('export_onnx', tmp_path / 'b.onnx', '--arch', 'mini', '--checkpoint',
                 tmp_path / 'retina.pth', '--shape', '64', '64', '--static')
    sess = onnxruntime_session(str(tmp_path / 'b.onnx'))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(outs) == 3
    assert_all_close([torch.from_numpy(o) for o in outs], ref)


def test_export_tool_wrong_arch_summarised(tmp_path):
    torch.save({'state_dict': paper_classifier('mini').state_dict()}, tmp_path / 'mini.pth')
    err = _deploy_tool('export_onnx', tmp_path / 'x.onnx', '--arch', 't', '--classifier',
                       '--num-classes', 10, '--checkpoint', tmp_path / 'mini.pth', ok=False)
    assert 'does not match an S2AFormer-t classifier' in err and '--arch' in err, err
    assert 'Traceback' not in err and len(err.splitlines()) < 8, err


def test_fuse_checkpoint_tool(tmp_path):
    ckpt = save_initial_checkpoint(str(REPO / CLS_CFG), str(tmp_path / 'init.pth'))
    out = _deploy_tool('fuse_checkpoint', CLS_CFG, ckpt, tmp_path / 'deploy.pth', '--check')
    error = float(re.search(r'max abs error ([-+.e\d]+)', out).group(1))
    assert error < 1e-4, out
    deployed = load_deploy_model(str(REPO / CLS_CFG), str(tmp_path / 'deploy.pth'))
    reference = build_model_from_config(str(REPO / CLS_CFG))
    reference.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ClassifierLogits(deployed.eval())(x),
                                   ClassifierLogits(reference.eval())(x), atol=1e-4, rtol=1e-4)


def test_deploy_checkpoint_through_library_apis(tmp_path):
    """mmseg's own API: init_model refuses a deploy checkpoint (mmengine loads with
    strict=False and would only warn), and load_deploy_model's model runs in
    inference_model with the training checkpoint's predictions and dataset_meta."""
    from mmseg.apis import inference_model, init_model

    config = str(REPO / 'configs/demo/fpn_s2aformer_mini_ade20k_demo.py')
    ckpt = save_initial_checkpoint(config, str(tmp_path / 'init.pth'))
    state = torch.load(ckpt, weights_only=True)
    meta = dict(classes=tuple(f'c{i}' for i in range(150)), palette=[[0, 0, 0]] * 150)
    state['meta']['dataset_meta'] = meta
    torch.save(state, ckpt)
    _deploy_tool('fuse_checkpoint', config, ckpt, tmp_path / 'deploy.pth')
    with pytest.raises(CheckpointMismatchError, match=r'(?s)backbone are S2AFormer.s deploy form'
                       r'.*load_deploy_model'):
        init_model(config, str(tmp_path / 'deploy.pth'), device='cpu')
    deployed = load_deploy_model(config, str(tmp_path / 'deploy.pth'))
    assert deployed.dataset_meta['classes'] == meta['classes']
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        got = inference_model(deployed, image).seg_logits.data
        want = inference_model(init_model(config, ckpt, device='cpu'), image).seg_logits.data
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


