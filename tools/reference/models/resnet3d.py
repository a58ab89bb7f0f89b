"""mmaction2's I3D recogniser: ResNet3d backbone + I3DHead, with mmcv's ConvModule and NonLocal3d.

Written for vidgrad's reference fixtures from the semantics of mmaction2 `mmaction/models/backbones/resnet3d.py`,
`mmaction/models/heads/i3d_head.py` and mmcv `mmcv/cnn/bricks/non_local.py` (neither is installable here).
Module names are theirs, so the state_dict keys are those of an mmaction2 Recognizer3D checkpoint:
`backbone.conv1.conv.weight`, `backbone.layer1.0.conv1.bn.running_mean`, `backbone.layer1.0.downsample.conv.weight`,
`backbone.layer2.1.non_local_block.g.0.conv.weight` (with sub_sample: the conv sits in a Sequential with the pool),
`backbone.layer2.1.non_local_block.conv_out.bn.weight`, `cls_head.fc_cls.weight`.

Only the forward semantics are reproduced (no weight initialisation, no 2D inflation, no frozen stages).
The input is the already normalised clip [B, C, T, H, W] (mmaction2's data preprocessor is left out).
"""

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class ConvModule(nn.Module):
    """mmcv ConvModule, order conv -> norm -> act; bias='auto' means a bias only without a norm layer."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, dilation=1, bias="auto", norm=True, act=True):
        super().__init__()
        if bias == "auto":
            bias = not norm
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding, dilation, bias=bias)
        if norm:
            self.bn = nn.BatchNorm3d(cout)
        self.with_norm = norm
        if act:
            self.activate = nn.ReLU(inplace=True)
        self.with_act = act

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        if self.with_act:
            x = self.activate(x)
        return x


class NonLocal3d(nn.Module):
    """mmcv NonLocal3d (modes gaussian, embedded_gaussian, dot_product). With sub_sample, g and phi become
    Sequential(ConvModule, MaxPool3d((1, 2, 2))): the pool comes after the 1x1x1 conv."""

    def __init__(self, in_channels, reduction=2, use_scale=True, norm=False, mode="embedded_gaussian",
                 sub_sample=False):
        super().__init__()
        assert mode in ("gaussian", "embedded_gaussian", "dot_product")
        self.in_channels = in_channels
        self.inter_channels = max(in_channels // reduction, 1)
        self.use_scale = use_scale
        self.mode = mode
        self.sub_sample = sub_sample
        ci = self.inter_channels
        self.g = ConvModule(in_channels, ci, 1, norm=False, act=False)
        self.conv_out = ConvModule(ci, in_channels, 1, norm=norm, act=False)
        if mode != "gaussian":
            self.theta = ConvModule(in_channels, ci, 1, norm=False, act=False)
            self.phi = ConvModule(in_channels, ci, 1, norm=False, act=False)
        if sub_sample:
            pool = nn.MaxPool3d(kernel_size=(1, 2, 2))
            self.g = nn.Sequential(self.g, pool)
            if mode != "gaussian":
                self.phi = nn.Sequential(self.phi, pool)
            else:
                self.phi = pool

    def forward(self, x):
        n = x.size(0)
        ci = self.inter_channels
        g_x = self.g(x).view(n, ci, -1).permute(0, 2, 1)
        if self.mode == "gaussian":
            theta_x = x.view(n, self.in_channels, -1).permute(0, 2, 1)
            if self.sub_sample:
                phi_x = self.phi(x).view(n, self.in_channels, -1)
            else:
                phi_x = x.view(n, self.in_channels, -1)
        else:
            theta_x = self.theta(x).view(n, ci, -1).permute(0, 2, 1)
            phi_x = self.phi(x).view(n, ci, -1)
        pw = torch.matmul(theta_x, phi_x)
        if self.mode == "dot_product":
            pw = pw / pw.shape[-1]
        else:
            if self.mode == "embedded_gaussian" and self.use_scale:
                pw = pw / theta_x.shape[-1] ** 0.5
            pw = pw.softmax(dim=-1)
        y = torch.matmul(pw, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, ci, *x.size()[2:])
        return x + self.conv_out(y)


class BasicBlock3d(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, spatial_stride=1, temporal_stride=1, dilation=1, downsample=None,
                 style="pytorch", inflate=True, inflate_style="3x1x1", non_local=False, non_local_cfg=None,
                 with_cp=False):
        super().__init__()
        # BasicBlock3d puts both strides on conv1 whatever the style
        if inflate:
            k1, p1, k2, p2 = (3, 3, 3), (1, dilation, dilation), (3, 3, 3), (1, 1, 1)
        else:
            k1, p1, k2, p2 = (1, 3, 3), (0, dilation, dilation), (1, 3, 3), (0, 1, 1)
        self.conv1 = ConvModule(inplanes, planes, k1, (temporal_stride, spatial_stride, spatial_stride), p1,
                                (1, dilation, dilation), bias=False)
        self.conv2 = ConvModule(planes, planes * self.expansion, k2, 1, p2, bias=False, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)
        self.with_cp = with_cp
        self.non_local = non_local
        if non_local:
            self.non_local_block = NonLocal3d(planes * self.expansion, **(non_local_cfg or {}))

    def forward(self, x):
        def _inner_forward(x):
            identity = x
            out = self.conv2(self.conv1(x))
            if self.downsample is not None:
                identity = self.downsample(x)
            return out + identity

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(_inner_forward, x, use_reentrant=True)
        else:
            out = _inner_forward(x)
        out = self.relu(out)
        if self.non_local:
            out = self.non_local_block(out)
        return out


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, spatial_stride=1, temporal_stride=1, dilation=1, downsample=None,
                 style="pytorch", inflate=True, inflate_style="3x1x1", non_local=False, non_local_cfg=None,
                 with_cp=False):
        super().__init__()
        assert style in ("pytorch", "caffe") and inflate_style in ("3x1x1", "3x3x3")
        if style == "pytorch":
            s1, s2 = (1, 1, 1), (temporal_stride, spatial_stride, spatial_stride)
        else:
            s1, s2 = (temporal_stride, spatial_stride, spatial_stride), (1, 1, 1)
        d = dilation
        if inflate and inflate_style == "3x1x1":
            k1, p1, k2, p2 = (3, 1, 1), (1, 0, 0), (1, 3, 3), (0, d, d)
        elif inflate:
            k1, p1, k2, p2 = (1, 1, 1), (0, 0, 0), (3, 3, 3), (1, d, d)
        else:
            k1, p1, k2, p2 = (1, 1, 1), (0, 0, 0), (1, 3, 3), (0, d, d)
        self.conv1 = ConvModule(inplanes, planes, k1, s1, p1, bias=False)
        self.conv2 = ConvModule(planes, planes, k2, s2, p2, (1, d, d), bias=False)
        self.conv3 = ConvModule(planes, planes * self.expansion, 1, bias=False, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)
        self.with_cp = with_cp
        self.non_local = non_local
        if non_local:
            self.non_local_block = NonLocal3d(planes * self.expansion, **(non_local_cfg or {}))

    def forward(self, x):
        def _inner_forward(x):
            identity = x
            out = self.conv3(self.conv2(self.conv1(x)))
            if self.downsample is not None:
                identity = self.downsample(x)
            return out + identity

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(_inner_forward, x, use_reentrant=True)
        else:
            out = _inner_forward(x)
        out = self.relu(out)
        if self.non_local:
            out = self.non_local_block(out)
        return out


ARCH = {
    18: (BasicBlock3d, (2, 2, 2, 2)),
    34: (BasicBlock3d, (3, 4, 6, 3)),
    50: (Bottleneck3d, (3, 4, 6, 3)),
    101: (Bottleneck3d, (3, 4, 23, 3)),
    152: (Bottleneck3d, (3, 8, 36, 3)),
}


def _per_block(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class ResNet3d(nn.Module):
    def __init__(self, depth=50, in_channels=3, base_channels=64, spatial_strides=(1, 2, 2, 2),
                 temporal_strides=(1, 1, 1, 1), dilations=(1, 1, 1, 1), conv1_kernel=(3, 7, 7), conv1_stride_s=2,
                 conv1_stride_t=1, pool1_stride_s=2, pool1_stride_t=1, with_pool1=True, with_pool2=True,
                 style="pytorch", inflate=(1, 1, 1, 1), inflate_style="3x1x1", non_local=(0, 0, 0, 0),
                 non_local_cfg=None, with_cp=False):
        super().__init__()
        block, stage_blocks = ARCH[depth]
        k = _triple(conv1_kernel)
        self.conv1 = ConvModule(in_channels, base_channels, k, (conv1_stride_t, conv1_stride_s, conv1_stride_s),
                                tuple((x - 1) // 2 for x in k), bias=False)
        self.maxpool = nn.MaxPool3d((1, 3, 3), (pool1_stride_t, pool1_stride_s, pool1_stride_s), (0, 1, 1))
        self.pool2 = nn.MaxPool3d((2, 1, 1), (2, 1, 1))
        self.with_pool1, self.with_pool2 = with_pool1, with_pool2
        inflate = _per_block(inflate, 4)
        non_local = _per_block(non_local, 4)
        inplanes = base_channels
        self.res_layers = []
        for i, nb in enumerate(stage_blocks):
            planes = base_channels * 2**i
            ss, ts, d = spatial_strides[i], temporal_strides[i], dilations[i]
            inf, nl = _per_block(inflate[i], nb), _per_block(non_local[i], nb)
            downsample = None
            if ss != 1 or inplanes != planes * block.expansion:
                downsample = ConvModule(inplanes, planes * block.expansion, 1, (ts, ss, ss), bias=False, act=False)
            layers = []
            for j in range(nb):
                layers.append(block(inplanes, planes, ss if j == 0 else 1, ts if j == 0 else 1, d,
                                    downsample if j == 0 else None, style, inf[j] == 1, inflate_style, nl[j] == 1,
                                    non_local_cfg, with_cp))
                inplanes = planes * block.expansion
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.res_layers.append(name)
        self.feat_dim = inplanes

    def forward(self, x):
        x = self.conv1(x)
        if self.with_pool1:
            x = self.maxpool(x)
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i == 0 and self.with_pool2:
                x = self.pool2(x)
        return x


class I3DHead(nn.Module):
    def __init__(self, num_classes, in_channels, dropout_ratio=0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio != 0 else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))

    def forward(self, x):
        x = self.avg_pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x.view(x.shape[0], -1))


class Recognizer3D(nn.Module):
    def __init__(self, num_classes=400, dropout_ratio=0.5, **backbone):
        super().__init__()
        self.backbone = ResNet3d(**backbone)
        self.cls_head = I3DHead(num_classes, self.backbone.feat_dim, dropout_ratio)

    def forward(self, x):
        return self.cls_head(self.backbone(x))


# mmaction2 configs/_base_/models/i3d_r50.py (zero_init_residual / pretrained only affect initialisation)
I3D_R50 = dict(depth=50, conv1_kernel=(5, 7, 7), conv1_stride_t=2, pool1_stride_t=2,
               inflate=((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)))
# configs/recognition/i3d/i3d_imagenet-pretrained-r50-nl-*: non-local after blocks 1, 3 of layer2 and 1, 3, 5 of layer3
I3D_R50_NL = dict(I3D_R50, non_local=((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)))


def nl_cfg(mode, use_scale=False, sub_sample=True, norm=True):
    return dict(mode=mode, use_scale=use_scale, sub_sample=sub_sample, norm=norm)


# seed 004's printed network: I3D-R50's stem, every block inflated (3,1,1)
SEED004 = dict(I3D_R50, inflate=(1, 1, 1, 1))
