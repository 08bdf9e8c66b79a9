"""The ``compile`` option's parts (s2aformer_mm/engine/compiling.py) on toy models; a
compiled training run through the tools is in tests/e2e/test_reliability.py."""
import copy

import pytest
import torch

@pytest.mark.parametrize('with_cp,drop_path,expected', [
    (True, 0.1, 7), (False, 0.1, 0), (True, 0.0, 0)])
def test_checkpointed_random_layers_found(with_cp, drop_path, expected):
    """What the eager-backend refusal below looks for: drop path inside with_cp blocks
    (mini: 8 blocks, the first at drop path rate 0)."""
    from s2aformer_mm import S2AFormer
    from s2aformer_mm.engine.compiling import _checkpointed_random_layers
    found = _checkpointed_random_layers(
        S2AFormer('mini', drop_path_rate=drop_path, with_cp=with_cp))
    assert len(found) == expected and all(n.endswith('.drop_path') for n in found), found


class _ModeLinear(torch.nn.Linear):
    """Reads ``training`` (as dropout and BN do), so a compiled call in eval recompiles."""

    def forward(self, x):
        return super().forward(x) if self.training else super().forward(x)


def test_compiled_forward_is_eager_in_eval_and_not_shared_by_deep_copies():
    """compile_model on a toy model: only children with parameters (not the data
    preprocessor), compiled while training; a deep copy (what EMAHook makes) computes
    with its own weights, not through the original's compiled forward."""
    from types import SimpleNamespace

    from s2aformer_mm.engine.compiling import CompiledWhileTraining, compile_model
    model = torch.nn.Module()
    model.data_preprocessor, model.backbone = torch.nn.Linear(2, 2), _ModeLinear(2, 2)
    model.act = torch.nn.ReLU()
    graphs = []

    def backend(gm, example_inputs):  # counts what dynamo compiles, runs it as traced
        graphs.append(gm)
        return gm.forward

    hooks = []
    compile_model(SimpleNamespace(model=model, register_hook=lambda h, priority: hooks.append(h)),
                  dict(backend=backend))
    assert isinstance(model.backbone.forward, CompiledWhileTraining)
    assert 'forward' not in vars(model.data_preprocessor) and 'forward' not in vars(model.act)
    x = torch.randn(3, 2)
    with torch.no_grad():
        expected = model.backbone.weight @ x.t()
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        assert len(graphs) == 1
        model.eval()
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        assert len(graphs) == 1  # eval: eager, nothing compiled
        model.train()
        twin = copy.deepcopy(model)
        twin.backbone.weight.mul_(2)
        assert torch.allclose(twin.backbone(x).t() - twin.backbone.bias[:, None], 2 * expected)
        assert torch.allclose(model.backbone(x).t() - model.backbone.bias[:, None], expected)
        hooks[0].after_train_iter(None, 0)   # the backbone's forward was called: kept
        assert isinstance(vars(model.backbone)['forward'], CompiledWhileTraining)


def test_compile_hands_an_uncalled_forward_down_to_its_sub_networks():
    """Like mmdet's RoI heads: training calls head.fc directly, never head.forward. After
    an iteration the head runs eager again and its sub-network is compiled instead."""
    from types import SimpleNamespace

    from s2aformer_mm.engine.compiling import CompiledWhileTraining, compile_model
    model = torch.nn.Module()
    model.head = torch.nn.Module()
    model.head.fc, model.head.scale = torch.nn.Linear(2, 2), torch.nn.ReLU()
    graphs, hooks = [], []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_model(SimpleNamespace(model=model, register_hook=lambda h, priority: hooks.append(h)),
                  dict(backend=backend))
    x = torch.randn(3, 2)
    model.head.fc(x)   # the "loss" path
    assert not graphs and isinstance(vars(model.head)['forward'], CompiledWhileTraining)
    hooks[0].after_train_iter(None, 0)
    assert 'forward' not in vars(model.head)
    assert 'forward' not in vars(model.head.scale)   # no parameters: left alone
    out = model.head.fc(x)
    assert len(graphs) == 1 and torch.allclose(out, x @ model.head.fc.weight.t()
                                               + model.head.fc.bias)
    hooks[0].after_train_iter(None, 1)   # now called: stays compiled
    assert isinstance(vars(model.head.fc)['forward'], CompiledWhileTraining)


