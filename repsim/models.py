"""CIFAR-style residual networks for the wide/deep study.

The networks follow He et al. (2016), section 4.2: a 3×3 stem convolution, three stages
of ``n`` residual blocks with ``16k``, ``32k`` and ``64k`` channels (``k`` is the width
multiplier of Nguyen, Raghu & Kornblith, 2021), global average pooling and a linear
classifier, for a depth of ``6n + 2`` weight layers. Each block is the original ("v1")
basic block, conv-BN-ReLU-conv-BN, added to the shortcut, then ReLU; the first block of
stages 2 and 3 halves the spatial size and uses a projection shortcut (1×1 convolution and
batch norm).

Every residual block has a stable dotted name, ``stage{s}.block{b}`` (``s`` in 1..3, ``b``
in 0..n-1), so its output can be selected by name or glob, e.g. ``"stage2.*"``;
:func:`block_names` lists them in forward order. Inside a block every operation on the main
path is its own module -- ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2`` and ``relu2``, the
ReLU after the residual addition, whose output is the block's output -- so the analyses of
Nguyen, Raghu & Kornblith (2021), which use every layer, can hook each one;
:func:`layer_names` lists them. The ReLU modules hold no parameters: checkpoints are the
same as before they became modules.

This module imports torch at import time; ``import repsim`` does not import it.

References
----------
He, K., Zhang, X., Ren, S. and Sun, J. (2016). Deep residual learning for image
recognition. CVPR.

Nguyen, T., Raghu, M. and Kornblith, S. (2021). Do wide and deep networks learn the same
things? Uncovering how neural network representations vary with width and depth. ICLR.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet", "block_names", "layer_names"]


class BasicBlock(nn.Module):
    """The v1 residual block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU.

    Parameters
    ----------
    in_channels : int
        Channels of the input map.
    out_channels : int
        Channels of the output map.
    stride : int, default 1
        Stride of the first convolution; 2 halves the spatial size.

    Notes
    -----
    Input ``(batch, in_channels, h, w)``, output
    ``(batch, out_channels, ceil(h / stride), ceil(w / stride))``. When the shape changes
    the shortcut is a 1×1 convolution with the same stride followed by batch norm
    (He et al. 2016, option B); otherwise it is the identity. No operation is in place, so
    a forward hook's view of a block output is never overwritten later in the forward.
    Submodules in forward order: ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``, (the
    ``shortcut``), ``relu2`` -- the ReLU after the addition, whose output is the block's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` and width multiplier ``k`` for small images.

    Parameters
    ----------
    depth : int
        Number of weight layers, ``6n + 2`` with ``n >= 1`` (8, 14, 20, 32, 44, 56, 110,
        164, ...).
    width : int, default 1
        Width multiplier ``k``: the stages have ``16k``, ``32k`` and ``64k`` channels.
    num_classes : int, default 10
        Outputs of the final linear layer.
    in_channels : int, default 3
        Channels of the input images (1 for greyscale).
    zero_init_residual : bool, default False
        Initialise the last batch-norm scale of every residual branch to zero (Goyal et
        al. 2017), so each block starts as the identity. Off by default, matching He et
        al. (2016); it changes the representations that training finds.

    Attributes
    ----------
    stem : nn.Sequential
        ``conv`` (3×3, ``16k`` channels), ``bn``, ``relu``.
    stage1, stage2, stage3 : nn.Sequential
        Residual blocks named ``block0`` ... ``block{n-1}``.
    pool : nn.AdaptiveAvgPool2d
        Global average pooling to ``1×1``.
    fc : nn.Linear
        Classifier on the ``64k`` pooled features.

    Notes
    -----
    Input ``(batch, in_channels, h, w)``; logits ``(batch, num_classes)``. Stages 2 and 3
    halve the spatial size, so a 32×32 image gives maps of 32×32, 16×16 and 8×8.

    Examples
    --------
    >>> net = cifar_resnet(20, width=2)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> block_names(net)[:2]
    ['stage1.block0', 'stage1.block1']
    """

    def __init__(
        self,
        depth: int,
        width: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be an integer 6n+2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        self.depth = depth
        self.width = width
        self.blocks_per_stage = (depth - 2) // 6
        channels = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False),
                bn=nn.BatchNorm2d(channels[0]),
                relu=nn.ReLU(),
            )
        )
        previous = channels[0]
        for s, c in enumerate(channels, start=1):
            blocks = OrderedDict()
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks[f"block{b}"] = BasicBlock(previous, c, stride)
                previous = c
            setattr(self, f"stage{s}", nn.Sequential(blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def cifar_resnet(
    depth: int,
    width: int = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """Build a CIFAR-style ResNet of depth ``6n + 2`` and width multiplier ``width``.

    Parameters
    ----------
    depth : int
        ``6n + 2`` weight layers (8, 14, 20, 26, 32, 38, 44, 56, 110, 164, ...); the
        network has ``3n`` residual blocks.
    width : int, default 1
        Width multiplier ``k``; stages have ``16k``, ``32k``, ``64k`` channels.
    num_classes : int, default 10
        Number of classes.
    in_channels : int, default 3
        Input image channels.
    zero_init_residual : bool, default False
        Zero the last BN scale of each residual branch at initialisation.

    Returns
    -------
    CifarResNet
        Maps ``(batch, in_channels, h, w)`` to logits ``(batch, num_classes)``.

    References
    ----------
    He et al. (2016), section 4.2; Nguyen, Raghu & Kornblith (2021), section 3.
    """
    return CifarResNet(depth, width, num_classes, in_channels, zero_init_residual)


def block_names(model: nn.Module) -> list[str]:
    """Dotted names of the residual blocks of ``model``, in forward order.

    Parameters
    ----------
    model : nn.Module
        Typically a :class:`CifarResNet`; any module whose residual blocks are
        :class:`BasicBlock` instances works.

    Returns
    -------
    list of str
        ``["stage1.block0", ..., "stage3.block{n-1}"]``, ``3n`` names for depth ``6n+2``.
    """
    return [name for name, m in model.named_modules() if isinstance(m, BasicBlock)]


#: What :func:`layer_names` returns for each ``kind``.
LAYER_KINDS = ("all", "relu", "blocks")


def layer_names(model: nn.Module, kind: str = "all") -> list[str]:
    """Dotted names of the layers of a :class:`CifarResNet` along its main path, in forward order.

    Parameters
    ----------
    model : CifarResNet
        The network.
    kind : {"all", "relu", "blocks"}, default "all"
        ``"all"``: every convolution, batch norm and ReLU output on the main path --
        ``stem.conv``, ``stem.bn``, ``stem.relu``, then per residual block ``conv1``,
        ``bn1``, ``relu1``, ``conv2``, ``bn2``, ``relu2`` (the ReLU after the residual
        addition: the block output) -- ``2 + 6 * 3n + 1 = 18n + 3`` layers for depth
        ``6n + 2``. Projection shortcuts are side branches and left out. ``"relu"``: the
        ReLU outputs only (``6n + 1``). ``"blocks"``: the residual-block outputs
        (:func:`block_names`, ``3n``; each equals that block's ``relu2`` output).

    Returns
    -------
    list of str

    Examples
    --------
    >>> net = cifar_resnet(8)
    >>> layer_names(net)[:5]
    ['stem.conv', 'stem.bn', 'stem.relu', 'stage1.block0.conv1', 'stage1.block0.bn1']
    >>> len(layer_names(net)), len(layer_names(net, "relu")), len(layer_names(net, "blocks"))
    (21, 7, 3)
    """
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, LAYER_KINDS))}; got {kind!r}")
    if kind == "blocks":
        return block_names(model)
    per_block = ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2")
    stem = ("stem.conv", "stem.bn", "stem.relu")
    if kind == "relu":
        per_block, stem = ("relu1", "relu2"), ("stem.relu",)
    names = list(stem)
    for block in block_names(model):
        names += [f"{block}.{part}" for part in per_block]
    return names
