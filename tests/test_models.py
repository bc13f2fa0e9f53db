import pytest

torch = pytest.importorskip("torch")

from repsim.models import BasicBlock, block_names, cifar_resnet  # noqa: E402


@pytest.mark.parametrize("depth", [8, 14, 20, 56])
@pytest.mark.parametrize("width", [1, 2])
def test_depth_width_arithmetic(depth, width):
    net = cifar_resnet(depth, width)
    n = (depth - 2) // 6
    names = block_names(net)
    assert len(names) == 3 * n
    assert names[0] == "stage1.block0" and names[-1] == f"stage3.block{n - 1}"
    assert names == [f"stage{s}.block{b}" for s in (1, 2, 3) for b in range(n)]
    convs = [m for name, m in net.named_modules()
             if isinstance(m, torch.nn.Conv2d) and "shortcut" not in name]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    # 6n+2 weight layers: the stem conv, 2 convs per block, the classifier
    assert len(convs) + len(linears) == depth
    assert net.stage1.block0.conv1.out_channels == 16 * width
    assert net.stage2.block0.conv1.out_channels == 32 * width
    assert net.stage3.block0.conv1.out_channels == 64 * width
    assert net.fc.in_features == 64 * width


def test_output_and_block_shapes():
    net = cifar_resnet(14, width=2, num_classes=7, in_channels=1).eval()
    shapes = {}
    for name in block_names(net):
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    out = net(torch.randn(3, 1, 32, 32))
    assert out.shape == (3, 7)
    assert shapes["stage1.block1"] == (3, 32, 32, 32)
    assert shapes["stage2.block0"] == (3, 64, 16, 16)
    assert shapes["stage3.block1"] == (3, 128, 8, 8)
    # odd sizes: 8x8 digits go 8 -> 4 -> 2
    net8 = cifar_resnet(8, in_channels=1).eval()
    assert net8(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_projection_shortcuts_only_on_downsampling():
    net = cifar_resnet(20)
    for name in block_names(net):
        block = net.get_submodule(name)
        assert isinstance(block, BasicBlock)
        projected = not isinstance(block.shortcut, torch.nn.Identity)
        assert projected == (name in ("stage2.block0", "stage3.block0"))
    sc = net.stage2.block0.shortcut
    assert sc.conv.kernel_size == (1, 1) and sc.conv.stride == (2, 2)
    assert isinstance(sc.bn, torch.nn.BatchNorm2d)


def test_parameter_count_resnet20_matches_he_et_al():
    # He et al. (2016), table 6: ResNet-20 has 0.27M parameters (with option-A shortcuts;
    # the two projection shortcuts add 16*32 + 32*64 conv weights and their BN).
    net = cifar_resnet(20)
    count = sum(p.numel() for p in net.parameters())
    assert 0.26e6 < count < 0.28e6


def test_zero_init_residual_makes_blocks_start_as_identity_branch():
    net = cifar_resnet(8, zero_init_residual=True)
    assert all(int(torch.count_nonzero(net.get_submodule(n).bn2.weight.detach())) == 0 for n in block_names(net))
    net2 = cifar_resnet(8)
    assert all(bool((net2.get_submodule(n).bn2.weight.detach() > 0).all()) for n in block_names(net2))


def test_seeded_construction_is_deterministic():
    torch.manual_seed(3)
    a = cifar_resnet(8).state_dict()
    torch.manual_seed(3)
    b = cifar_resnet(8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 10}, "depth"), ({"depth": 2}, "depth"), ({"depth": 8.0}, "depth"),
    ({"depth": 8, "width": 0}, "width"), ({"depth": 8, "num_classes": 0}, "num_classes"),
    ({"depth": 8, "in_channels": 0}, "in_channels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cifar_resnet(**kwargs)


def test_no_inplace_ops_so_hooks_see_final_values():
    net = cifar_resnet(8).eval()
    seen = {}
    net.stage1.block0.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    x = torch.randn(2, 3, 8, 8)
    net(x)
    again = net.stage1.block0(net.stem(x))
    assert torch.equal(seen["a"], again)


def test_import_repsim_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, repsim; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("depth", [8, 20, 110])
def test_every_layer_is_a_named_module(depth):
    from repsim.models import layer_names

    net = cifar_resnet(depth)
    n = (depth - 2) // 6
    names = layer_names(net)
    assert len(names) == 18 * n + 3 and len(set(names)) == len(names)
    assert len(layer_names(net, "relu")) == 6 * n + 1
    assert layer_names(net, "blocks") == block_names(net)
    kinds = {torch.nn.Conv2d: 0, torch.nn.BatchNorm2d: 0, torch.nn.ReLU: 0}
    for name in names:
        m = net.get_submodule(name)
        kinds[type(m)] += 1
    # main-path convs: stem + 2 per block; every conv has its BN; ReLUs: stem + 2 per block
    assert kinds == {torch.nn.Conv2d: 1 + 6 * n, torch.nn.BatchNorm2d: 1 + 6 * n, torch.nn.ReLU: 1 + 6 * n}
    with pytest.raises(ValueError, match="kind must be one of"):
        layer_names(net, "leaves")


def test_layer_outputs_follow_the_forward_and_relu2_is_the_block_output():
    from repsim.models import layer_names

    torch.manual_seed(0)
    net = cifar_resnet(14, in_channels=1).eval()
    seen, order = {}, []
    names = layer_names(net) + block_names(net)
    def hook(name):
        def fn(m, i, o):
            seen[name] = o
            order.append(name)
        return fn

    for name in names:
        net.get_submodule(name).register_forward_hook(hook(name))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        net(x)
    # hooks fire in forward order (a block's hook right after its relu2)
    assert [n for n in order if n in set(layer_names(net))] == layer_names(net)
    for block in block_names(net):
        assert torch.equal(seen[f"{block}.relu2"], seen[block])
        # relu2 = relu(bn2 + shortcut(block input)); relu1 = relu(bn1)
        assert torch.equal(seen[f"{block}.relu1"], torch.relu(seen[f"{block}.bn1"]))
    blk = net.stage2.block0
    with torch.no_grad():
        expected = torch.relu(seen["stage2.block0.bn2"] + blk.shortcut(seen["stage1.block1"]))
    assert torch.equal(seen["stage2.block0.relu2"], expected)


def test_state_dict_keys_and_outputs_unchanged_by_relu_modules():
    # the ReLU modules hold nothing: the checkpoint layout of earlier versions loads strictly
    net = cifar_resnet(8)
    keys = set(net.state_dict())
    assert not any("relu" in k for k in keys)
    torch.manual_seed(1)
    a = cifar_resnet(20).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        # the functional forward of earlier versions, written out
        def old_block(b, h):
            out = torch.nn.functional.relu(b.bn1(b.conv1(h)))
            return torch.nn.functional.relu(b.bn2(b.conv2(out)) + b.shortcut(h))
        h = a.stem(x)
        for name in block_names(a):
            h = old_block(a.get_submodule(name), h)
        old = a.fc(torch.flatten(a.pool(h), 1))
        assert torch.equal(a(x), old)
