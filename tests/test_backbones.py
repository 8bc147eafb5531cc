"""The papers' recognizer backbones (ALGORITHMS §0.2, §6) and the timm stem rule."""
import pytest
import torch
from torch import nn

from bench.backbones import backbone_names, build_backbone
from bench.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAPER = backbone_names()
REF_SIDE = {"ir_se_50": 112, "ir_50": 112, "ir_18": 112, "inception_resnet_v1": 160}
# Trunk + reference 512-d output layer, 3 input channels, at REF_SIDE. Each figure is the count
# of the reference definition itself, instantiated and compared layer by layer (identical outputs
# on copied weights):
#   ir_se_50: face.evoLVe backbone/model_irse.py IR_SE_50([112, 112])          -> 43,797,696
#   ir_50:    face.evoLVe backbone/model_irse.py IR_50([112, 112])             -> 43,574,976
#   ir_18:    face.evoLVe Backbone with get_block(..., num_units=2) ×4 stages  -> 24,017,536
#             (insightface iresnet18 is 24,025,600: its IBasicBlock has one more BN per unit)
#   inception_resnet_v1: facenet-pytorch InceptionResnetV1(classify=False)     -> 23,482,624
REFERENCE_PARAMS = {"ir_se_50": 43_797_696, "ir_50": 43_574_976, "ir_18": 24_017_536,
                    "inception_resnet_v1": 23_482_624}
FEAT_SHAPE = {"ir_se_50": (512, 7, 7), "ir_50": (512, 7, 7), "ir_18": (512, 7, 7),
              "inception_resnet_v1": (1792, 3, 3)}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_every_paper_backbone_is_registered():
    assert set(PAPER) == set(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", PAPER)
def test_parameter_count_matches_the_reference(name):
    net = build_backbone(name, 3, REF_SIDE[name])
    neck = net.make_neck(512, 0.4, FEAT_SHAPE[name])
    assert n_params(net) + n_params(neck) == REFERENCE_PARAMS[name]


def test_ir_nets_give_512x7x7_maps_at_112_px():
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        for name in ("ir_se_50", "ir_50", "ir_18"):
            assert build_backbone(name, 3, 112).eval()(x).shape == (1, 512, 7, 7), name


def test_inception_stem_is_advface_split_and_final_map_is_1792x3x3_at_160_px():
    net = build_backbone("inception_resnet_v1", 3, 160).eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        z = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        assert z.shape == (1, 64, 77, 77)  # ALGORITHMS §6: z = E(x) ∈ R^{64×77×77}
        assert net(x).shape == (1, 1792, 3, 3)
        assert net.make_neck(512, 0.6, (1792, 3, 3)).eval()(net(x)).shape == (1, 512)


def _composed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the harness does when it splits a backbone: the stem then the stages, by name."""
    x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
    for i in range(1, 5):
        x = getattr(net, f"layer{i}")(x)
    return net.forward_head(net.global_pool(x))


@pytest.mark.parametrize("name,in_chans,side", [("ir_se_50", 3, 32), ("ir_50", 63, 16),
                                                 ("ir_18", 64, 16), ("inception_resnet_v1", 3, 80),
                                                 ("resnet18", 63, 16)])
def test_timm_resnet_interface_and_split_equals_forward(name, in_chans, side):
    net = build_backbone(name, in_chans, side).eval()
    for attr in ("conv1", "bn1", "act1", "maxpool"):
        assert isinstance(getattr(net, attr), nn.Module), attr
    assert all(isinstance(getattr(net, f"layer{i}"), nn.Sequential) for i in range(1, 5))
    assert isinstance(net.global_pool, nn.Identity) and isinstance(net.fc, nn.Identity)
    assert net.drop_rate == 0.0
    x = torch.rand(2, in_chans, side, side)
    with torch.no_grad():
        y = net(x)
        assert y.ndim == 4 and torch.equal(net.forward_head(y), y)
        assert torch.allclose(_composed(net, x), y, atol=1e-6)


@pytest.mark.parametrize("name", PAPER)
def test_paper_backbone_trains_one_step_on_cpu(name):
    # IR nets on a 63-channel frequency map; Inception on images (its valid convs need >= 75 px)
    in_chans, side = (3, 160) if name == "inception_resnet_v1" else (63, 32)
    torch.manual_seed(0)
    net = build_backbone(name, in_chans, side)
    feat = net(torch.rand(2, in_chans, side, side))
    neck = net.make_neck(16, 0.0, tuple(feat.shape[1:]))
    neck(feat).pow(2).sum().backward()
    first = net.conv1 if isinstance(net.conv1, nn.Conv2d) else net.conv1[0][0]
    assert first.in_channels == in_chans
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert first.weight.grad.abs().sum() > 0  # the gradient reaches the stem


@pytest.mark.parametrize("side", [112, 8])
def test_frequency_maps_get_a_3x3_stride_1_stem_without_maxpool_at_any_side(side):
    net = build_backbone("resnet18", 63, side)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == 63 and net.conv1.bias is None
    assert net.conv1.out_channels == net.bn1.num_features
    assert isinstance(net.maxpool, nn.Identity)
    with torch.no_grad():  # full resolution until layer2: 3 stride-2 stages
        assert net.eval()(torch.rand(1, 63, side, side)).shape[-1] == side // 8


def test_images_keep_timms_7x7_stride_2_stem_and_maxpool():
    net = build_backbone("resnet18", 3, 112)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    forced = build_backbone("resnet18", 3, 112, freq_map=True)
    assert forced.conv1.kernel_size == (3, 3) and isinstance(forced.maxpool, nn.Identity)


def test_timm_widths_reach_the_stages():
    net = build_backbone("resnet18", 1, 32, widths=(8, 8, 16, 24))
    assert net.layer4[-1].conv2.out_channels == 24


@pytest.mark.parametrize("name", ["ir_se_50", "ir_50", "ir_18"])
def test_ir_nets_keep_their_3x3_stride_1_stem_on_frequency_maps(name):
    net = build_backbone(name, 63, 112)
    assert (net.conv1.in_channels, net.conv1.kernel_size, net.conv1.stride) == (63, (3, 3), (1, 1))
    assert isinstance(net.act1, nn.PReLU) and isinstance(net.maxpool, nn.Identity)
    # only the first conv differs from the RGB network
    assert n_params(net) - n_params(build_backbone(name, 3, 112)) == (63 - 3) * 64 * 9


def test_ir_units_stride_on_the_first_unit_of_each_stage():
    net = build_backbone("ir_18", 3, 112)
    for i in range(1, 5):
        stage = getattr(net, f"layer{i}")
        assert [u.res_layer[3].stride for u in stage] == [(2, 2), (1, 1)]


@pytest.mark.parametrize("name,se", [("ir_se_50", True), ("ir_50", False)])
def test_ir_unit_is_bn_conv_prelu_conv_bn_then_se(name, se):
    unit = build_backbone(name, 3, 112).layer3[1]
    kinds = [type(m).__name__ for m in unit.res_layer]
    assert kinds == ["BatchNorm2d", "Conv2d", "PReLU", "Conv2d", "BatchNorm2d"] + ["SEModule"] * se
    assert isinstance(unit.shortcut_layer, nn.MaxPool2d)  # same width: parameter-free shortcut
    first = build_backbone(name, 3, 112).layer3[0].shortcut_layer  # 128 -> 256: Conv1×1 + BN
    assert [type(m).__name__ for m in first] == ["Conv2d", "BatchNorm2d"]
    assert first[0].stride == (2, 2) and first[0].bias is None
    if se:
        assert unit.res_layer[5].fc1.out_channels == 256 // 16


def test_inception_residual_scales_follow_facenet():
    net = build_backbone("inception_resnet_v1", 3, 160)
    blocks = [*net.layer2[:-1], *net.layer3[:-1], *net.layer4]
    assert [b.scale for b in blocks] == [0.17] * 5 + [0.10] * 10 + [0.20] * 5 + [1.0]
    assert isinstance(net.layer4[-1].relu, nn.Identity)  # the last Block8 has no ReLU
    assert all(isinstance(b.relu, nn.ReLU) for b in blocks[:-1])


def test_ir_widths_scale_the_stages():
    net = build_backbone("ir_se_50", 1, 16, widths=(8, 8, 16, 16)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 16, 16)).shape == (1, 16, 1, 1)


def test_unknown_backbone_names_near_matches_and_the_fix():
    with pytest.raises(ConfigError, match=r"ir_se_50.*--set recognizer\.backbone=ir_se_50"):
        build_backbone("ir_se50", 3, 112)
    with pytest.raises(ConfigError, match="no near match.*--set recognizer.backbone"):
        build_backbone("qqqzzzxxx", 3, 112)


def test_inception_rejects_inputs_too_small_for_its_valid_convs():
    with pytest.raises(ConfigError, match="at least 75 px"):
        build_backbone("inception_resnet_v1", 3, 64)
    build_backbone("inception_resnet_v1", 3, 75).eval()(torch.rand(1, 3, 75, 75))
