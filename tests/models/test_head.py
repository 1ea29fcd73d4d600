import pytest
import torch

from segformer.models import AllMLPHead

IN_CHANNELS = (8, 16, 24, 32)


def make_head(seed: int = 0, num_classes: int = 5) -> AllMLPHead:
    torch.manual_seed(seed)
    head = AllMLPHead(IN_CHANNELS, decoder_dim=16, num_classes=num_classes, dropout=0.1)
    with torch.no_grad():  # non-trivial BatchNorm affine and statistics
        head.bn.weight.uniform_(0.5, 1.5)
        head.bn.bias.normal_(0, 0.3)
        head.bn.running_mean.normal_(0, 0.3)
        head.bn.running_var.uniform_(0.5, 2.0)
    return head


def make_features(size=(21, 27), batch=2, channels_last=True):
    h, w = size
    features = []
    for i, c in enumerate(IN_CHANNELS):
        x = torch.randn(batch, c, -(-h // 2**i), -(-w // 2**i))
        features.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return features


def assert_close(actual, expected, scale=None):
    """fp32 parity, relative to the scale of the output (default: of ``expected``)."""
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(("channels_last", "num_classes"), [(True, 5), (False, 5), (True, 150)])
def test_fast_path_matches_reference_in_eval(channels_last, num_classes):
    head = make_head(num_classes=num_classes).eval()  # BatchNorm folded into the stage maps
    features = make_features(channels_last=channels_last)
    with torch.no_grad():
        fast, ref = head(features), head.forward_reference(features)
    assert fast.shape == (2, num_classes, 21, 27)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert_close(fast, ref)


@pytest.mark.parametrize("num_classes", [5, 150])  # 150: the classifier GEMM is padded to 160
def test_fast_path_matches_reference_in_training_with_gradients(num_classes):
    features = make_features(size=(18, 25))
    outputs, grads, stats = [], [], []
    for forward in ("forward", "forward_reference"):
        head = make_head(num_classes=num_classes).train()
        torch.manual_seed(1)  # the same Dropout2d mask for both
        out = getattr(head, forward)(features)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append({n: p.grad for n, p in head.named_parameters()})
        stats.append((head.bn.running_mean.clone(), head.bn.running_var.clone()))
    assert_close(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys()
    # the same gradients for every parameter, the fuse conv included; one scale for all, since
    # the projection biases get none in theory (training-mode BatchNorm removes constants)
    scale = max(g.abs().max().item() for g in grads[1].values())
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], scale)
    for fast, ref in zip(stats[0], stats[1], strict=True):
        assert_close(fast, ref)


def test_state_dict_layout():
    keys = set(make_head().state_dict())
    assert {"fuse.weight", "bn.running_mean", "classifier.weight", "classifier.bias"} <= keys
    assert {f"proj.{i}.weight" for i in range(4)} <= keys
    assert make_head().fuse.weight.shape == (16, 64, 1, 1)  # concat order c4, c3, c2, c1
