"""The paper's optimiser groups and learning-rate schedule."""

import pytest
import torch

from segformer.models import SegFormer
from segformer.optim import WarmupPolyLR, fused_setting, param_groups


def test_param_groups_follow_the_official_recipe() -> None:
    model = SegFormer("b0", num_classes=5)
    groups = {g["name"]: g for g in param_groups(model, lr=6e-5, weight_decay=0.01)}
    assert set(groups) == {"encoder", "encoder_no_decay", "head"}
    assert groups["encoder"]["lr"] == pytest.approx(6e-5)
    assert groups["head"]["lr"] == pytest.approx(6e-4)
    assert groups["encoder"]["weight_decay"] == 0.01
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert groups["head"]["weight_decay"] == 0.01  # decoder BN keeps decay ("head" wins)

    layer_norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    no_decay = {id(p) for p in groups["encoder_no_decay"]["params"]}
    assert no_decay == {id(p) for m in layer_norms for p in m.parameters()}
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head_ids
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_no_decay_bias_option_exempts_every_bias() -> None:
    model = SegFormer("b0", num_classes=5)
    groups = param_groups(model, lr=1.0, weight_decay=0.01, no_decay_bias=True)
    for g in groups:
        names = {id(p): n for n, p in model.named_parameters()}
        biases = [names[id(p)] for p in g["params"] if names[id(p)].endswith(".bias")]
        assert not biases or g["weight_decay"] == 0.0, g["name"]


def _lr_after(steps: int, **kw: float) -> float:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=6e-5)
    sched = WarmupPolyLR(opt, total_steps=160_000, **kw)
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_warmup_poly_lr_values() -> None:
    # hand-computed with mmcv's formulas, base lr 6e-5, warmup 1500 from ratio 1e-6, poly 1.0
    assert _lr_after(0) == pytest.approx(6e-5 * 1e-6, rel=1e-9)  # warmup start
    # step 750: poly 1 - 750/160000 = 0.9953125; warmup 1 - 0.5 * (1 - 1e-6) = 0.5000005
    assert _lr_after(750) == pytest.approx(6e-5 * 0.9953125 * 0.5000005, rel=1e-9)
    # warmup end: pure poly 1 - 1500/160000 = 0.990625
    assert _lr_after(1500) == pytest.approx(6e-5 * 0.990625, rel=1e-9)


def test_poly_mid_and_end() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=6e-5)
    sched = WarmupPolyLR(opt, total_steps=160_000)
    assert sched.factor(80_000) == pytest.approx(0.5)
    assert sched.factor(160_000) == 0.0
    assert sched.factor(200_000) == 0.0  # clamps past the end
    sq = WarmupPolyLR(opt, total_steps=100, warmup_steps=0, power=2.0, min_lr_ratio=0.1)
    assert sq.factor(50) == pytest.approx(0.25 * 0.9 + 0.1)


def test_scheduler_state_round_trips() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLR(opt, total_steps=100, warmup_steps=10)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert all(isinstance(v, int | float | list | type(None)) for v in state.values())
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = WarmupPolyLR(opt2, total_steps=100, warmup_steps=10)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_fused_null_resolves_to_the_fused_kernel_where_it_may_run() -> None:
    adamw = {"lr": 1e-3, "fused": None}
    assert fused_setting(torch.optim.AdamW, adamw, fp16_clipping=False)["fused"] is True
    # fp16 AMP with clipping: Lightning refuses optimizers that unscale in their step
    assert "fused" not in fused_setting(torch.optim.AdamW, adamw, fp16_clipping=True)
    assert fused_setting(torch.optim.AdamW, {"fused": False}, False) == {"fused": False}

    def own_optimizer(params, lr: float) -> torch.optim.Optimizer:  # takes no ``fused``
        return torch.optim.SGD(params, lr=lr)

    assert fused_setting(own_optimizer, adamw, fp16_clipping=False) == {"lr": 1e-3}


def test_fused_adamw_takes_the_same_steps_as_the_default_one() -> None:
    """Tolerance 1e-6 after 5 steps (measured 6e-8): the fused kernel orders its float
    operations differently."""
    torch.manual_seed(0)
    a = SegFormer("b0", num_classes=6)
    b = SegFormer("b0", num_classes=6)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.01)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    for _ in range(5):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
