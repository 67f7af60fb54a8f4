"""MuonAdamW against torch.optim's Muon and AdamW, step by step; which parameters take Muon; a tiny fit with it."""

import copy

import pytest
import torch

from vit_lightning.training.optimizers import MuonAdamW, orthogonalize


def test_orthogonalize_brings_every_singular_value_near_one():
    torch.manual_seed(0)
    for shape in [(64, 192), (192, 64), (32, 48)]:  # a random square matrix may be near-singular
        matrix = torch.randn(shape) * torch.logspace(-1, 1, shape[1])  # singular values spread over 100x
        assert torch.linalg.svdvals(matrix).max() > 10 * torch.linalg.svdvals(matrix).min()
        singular = torch.linalg.svdvals(orthogonalize(matrix))
        torch.testing.assert_close(orthogonalize(torch.stack([matrix, 2 * matrix]))[1], orthogonalize(matrix))  # batched
        assert singular.min() > 0.6 and singular.max() < 1.25, (shape, singular.min(), singular.max())


def run(optimizer_class, parameter: torch.Tensor, **kwargs) -> torch.Tensor:
    parameter = parameter.clone().requires_grad_()
    optimizer = optimizer_class([{"params": [parameter]}], **kwargs)
    torch.manual_seed(1)
    for _ in range(3):
        parameter.grad = torch.randn_like(parameter)
        optimizer.step()
    return parameter.detach()


def test_hidden_matrices_follow_torch_muon_and_the_rest_torch_adamw():
    torch.manual_seed(0)
    matrix, head, bias = torch.randn(32, 16), torch.randn(10, 16), torch.randn(32)
    assert MuonAdamW.takes_muon(matrix) and not MuonAdamW.takes_muon(head) and not MuonAdamW.takes_muon(bias)
    settings = dict(lr=0.01, weight_decay=0.1)
    ours = run(MuonAdamW, matrix, **settings)
    # torch's Muon orthogonalizes in bfloat16, this one in float32: equal to about 1e-4 where a step moves 3e-3
    torch.testing.assert_close(ours, run(torch.optim.Muon, matrix, adjust_lr_fn="match_rms_adamw", **settings),
                               atol=5e-4, rtol=0)
    assert (ours - matrix).abs().mean() > 5 * 5e-4
    for parameter in (head, bias):
        torch.testing.assert_close(run(MuonAdamW, parameter, **settings),
                                   run(torch.optim.AdamW, parameter, **settings))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        MuonAdamW([torch.zeros(2, requires_grad=True)], momentum=1.5)


def test_state_survives_a_save_and_load():
    torch.manual_seed(0)
    parameters = [torch.randn(32, 16, requires_grad=True), torch.randn(16, requires_grad=True)]
    optimizer = MuonAdamW(parameters, lr=0.01)
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    copies = [parameter.detach().clone().requires_grad_() for parameter in parameters]
    reloaded = MuonAdamW(copies, lr=0.01)
    reloaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file
    for optimizer_now, group in ((optimizer, parameters), (reloaded, copies)):
        for parameter in group:
            parameter.grad = torch.full_like(parameter, 0.5)
        optimizer_now.step()
    for parameter, twin in zip(parameters, copies):
        torch.testing.assert_close(parameter, twin)


def test_an_adamw_state_resumes_with_muon_adamw():
    """A run trained with AdamW (the default before) and resumed with MuonAdamW: its moments are reused, Muon's
    momentum starts at zero, and settings AdamW's groups lack (momentum, ns_steps) take MuonAdamW's defaults."""
    torch.manual_seed(0)
    parameters = [torch.randn(32, 16, requires_grad=True), torch.randn(16, requires_grad=True)]
    adamw = torch.optim.AdamW(parameters, lr=0.01)
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    adamw.step()
    resumed = MuonAdamW(parameters, lr=0.01)
    resumed.load_state_dict(copy.deepcopy(adamw.state_dict()))
    resumed.step()
    assert resumed.param_groups[0]["momentum"] == 0.95 and resumed.param_groups[0]["ns_steps"] == 5
    assert torch.equal(resumed.state[parameters[0]]["momentum_buffer"], parameters[0].grad)
    assert resumed.state[parameters[1]]["step"] == 2  # AdamW's count went on
