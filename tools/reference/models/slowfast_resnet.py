"""PySlowFast's single-pathway ResNet (C2D / I3D, optional non-local), for vidgrad's reference fixtures.

Written from the semantics of facebookresearch/SlowFast `slowfast/models/{video_model_builder,
resnet_helper, stem_helper, nonlocal_helper, head_helper}.py` (seed 000): the same module tree and
attribute names, so `state_dict()` keys are PySlowFast's (`s1.pathway0_stem.conv.weight`,
`s2.pathway0_res0.branch1.weight`, `s3.pathway0_nonlocal1.conv_theta.weight`, `head.projection.weight`).
Differences that do not touch the state dict: `forward` takes a tensor [B, 3, T, H, W] rather than a
one-element list of pathways; the head's average-pool kernel is given (the res5 feature-map size);
the configuration is explicit arguments instead of a CfgNode; only what these models use is kept
(one pathway, bottleneck blocks, BatchNorm3d, softmax non-local with (1,2,2) pooling, no detection head).

    python tools/reference/models/slowfast_resnet.py   # parameter counts and forward MACs
"""

import torch
import torch.nn as nn

# MODEL.ARCH -> temporal kernel basis: stem, then res2..res5 (repeated over each stage's blocks).
TEMPORAL_KERNEL_BASIS = {
    "c2d": [1, [1], [1], [1], [1]],
    "i3d": [5, [3], [3, 1], [3, 1], [1, 3]],
}
STAGE_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NONLOCAL_LOCATION = [[], [1, 3], [1, 3, 5], []]


class ResNetBasicStem(nn.Module):
    def __init__(self, dim_in, dim_out, kt):
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, [kt, 7, 7], stride=[1, 2, 2], padding=[kt // 2, 3, 3], bias=False)
        self.bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)
        self.relu = nn.ReLU(True)
        self.pool_layer = nn.MaxPool3d([1, 3, 3], stride=[1, 2, 2], padding=[0, 1, 1])

    def forward(self, x):
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class VideoModelStem(nn.Module):
    def __init__(self, kt):
        super().__init__()
        self.pathway0_stem = ResNetBasicStem(3, 64, kt)

    def forward(self, x):
        return self.pathway0_stem(x)


class BottleneckTransform(nn.Module):
    """a: Tx1x1, b: 1x3x3 with the spatial stride, c: 1x1x1; BN after each, ReLU after a and b."""

    def __init__(self, dim_in, dim_out, kt, stride, dim_inner):
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, [kt, 1, 1], stride=1, padding=[kt // 2, 0, 0], bias=False)
        self.a_bn = nn.BatchNorm3d(dim_inner)
        self.a_relu = nn.ReLU(True)
        self.b = nn.Conv3d(dim_inner, dim_inner, [1, 3, 3], stride=[1, stride, stride], padding=[0, 1, 1], bias=False)
        self.b_bn = nn.BatchNorm3d(dim_inner)
        self.b_relu = nn.ReLU(True)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(dim_out)

    def forward(self, x):
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in, dim_out, kt, stride, dim_inner):
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=[1, stride, stride], bias=False)
            self.branch1_bn = nn.BatchNorm3d(dim_out)
        self.branch2 = BottleneckTransform(dim_in, dim_out, kt, stride, dim_inner)
        self.relu = nn.ReLU(True)

    def forward(self, x):
        f_x = self.branch2(x)
        if hasattr(self, "branch1"):
            x = self.branch1_bn(self.branch1(x)) + f_x
        else:
            x = x + f_x
        return self.relu(x)


class Nonlocal(nn.Module):
    """Softmax instantiation; x is max-pooled (1,2,2) before phi and g."""

    def __init__(self, dim, dim_inner, pool_size=(1, 2, 2)):
        super().__init__()
        self.dim_inner = dim_inner
        self.conv_theta = nn.Conv3d(dim, dim_inner, 1)
        self.conv_phi = nn.Conv3d(dim, dim_inner, 1)
        self.conv_g = nn.Conv3d(dim, dim_inner, 1)
        self.conv_out = nn.Conv3d(dim_inner, dim, 1)
        self.bn = nn.BatchNorm3d(dim)
        self.pool = nn.MaxPool3d(list(pool_size), stride=list(pool_size), padding=0)

    def forward(self, x):
        n, _, t, h, w = x.shape
        theta = self.conv_theta(x)
        pooled = self.pool(x)
        phi = self.conv_phi(pooled)
        g = self.conv_g(pooled)
        theta = theta.view(n, self.dim_inner, -1)
        phi = phi.view(n, self.dim_inner, -1)
        g = g.view(n, self.dim_inner, -1)
        affinity = torch.einsum("nct,ncp->ntp", theta, phi) * (self.dim_inner**-0.5)
        affinity = affinity.softmax(dim=2)
        y = torch.einsum("ntg,ncg->nct", affinity, g).view(n, self.dim_inner, t, h, w)
        return x + self.bn(self.conv_out(y))


class ResStage(nn.Module):
    def __init__(self, dim_in, dim_out, dim_inner, kernels, stride, blocks, nonlocal_inds):
        super().__init__()
        self.blocks = blocks
        for i in range(blocks):
            kt = kernels[i % len(kernels)]
            block = ResBlock(dim_in if i == 0 else dim_out, dim_out, kt, stride if i == 0 else 1, dim_inner)
            self.add_module(f"pathway0_res{i}", block)
            if i in nonlocal_inds:
                self.add_module(f"pathway0_nonlocal{i}", Nonlocal(dim_out, dim_out // 2))

    def forward(self, x):
        for i in range(self.blocks):
            x = getattr(self, f"pathway0_res{i}")(x)
            if hasattr(self, f"pathway0_nonlocal{i}"):
                x = getattr(self, f"pathway0_nonlocal{i}")(x)
        return x


class ResNetBasicHead(nn.Module):
    def __init__(self, dim_in, classes, pool_size, dropout, softmax):
        super().__init__()
        self.pathway0_avgpool = nn.AvgPool3d(pool_size, stride=1)
        if dropout > 0.0:
            self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(dim_in, classes, bias=True)
        self.act = nn.Softmax(dim=4) if softmax else None

    def forward(self, x):
        x = self.pathway0_avgpool(x).permute(0, 2, 3, 4, 1)
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        x = self.projection(x)
        if not self.training and self.act is not None:
            x = self.act(x)
        return x.reshape(x.shape[0], -1)


class ResNet(nn.Module):
    def __init__(self, arch="c2d", depth=50, nonlocal_blocks=True, classes=400, frames=8, size=224,
                 dropout=0.5, softmax=False):
        super().__init__()
        basis = TEMPORAL_KERNEL_BASIS[arch]
        d = STAGE_DEPTH[depth]
        nl = NONLOCAL_LOCATION if nonlocal_blocks else [[]] * 4
        self.s1 = VideoModelStem(basis[0])
        self.s2 = ResStage(64, 256, 64, basis[1], 1, d[0], nl[0])
        self.pathway0_pool = nn.MaxPool3d([2, 1, 1], stride=[2, 1, 1], padding=0)
        self.s3 = ResStage(256, 512, 128, basis[2], 2, d[1], nl[1])
        self.s4 = ResStage(512, 1024, 256, basis[3], 2, d[2], nl[2])
        self.s5 = ResStage(1024, 2048, 512, basis[4], 2, d[3], nl[3])
        self.head = ResNetBasicHead(2048, classes, [frames // 2, size // 32, size // 32], dropout, softmax)

    def forward(self, x):
        x = self.s2(self.s1(x))
        x = self.pathway0_pool(x)
        return self.head(self.s5(self.s4(self.s3(x))))


# vidgrad model name -> constructor arguments
MODELS = {
    "c2d-nl-r50": dict(arch="c2d", nonlocal_blocks=True),
    "i3d-r50": dict(arch="i3d", nonlocal_blocks=False),
    "i3d-nl-r50": dict(arch="i3d", nonlocal_blocks=True),
}


def forward_macs(model, shape):
    """Forward multiply-adds counted by torch.utils.flop_counter (convs, linear, the two einsums)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(shape))
    return fc.get_total_flops() // 2


if __name__ == "__main__":
    for name, kw in MODELS.items():
        for classes in (2, 400):
            m = ResNet(classes=classes, **kw)
            n = sum(p.numel() for p in m.parameters())
            print(f"{name} classes {classes}: {n:,} params, "
                  f"{forward_macs(m, [1, 3, 8, 224, 224]):,} MACs at 1x3x8x224x224")
