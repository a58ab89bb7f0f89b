"""CT-sep: seed 001's unfinished "CT-separable" network, completed (src/models/ct_sep.rs; docs/MODELS.md).

Seed 001 combines R(2+1)D's spatio-temporal separation ((1,3,3) then (3,1,1)) with Xception's channel
separation (depthwise then pointwise) in one 3D conv, CTSeparableConv3d, used inside residual blocks; its
code stops after the first line of that conv. Stem, stages and head follow torchvision's r2plus1d_18
(R2Plus1dStem, layers [2, 2, 2, 2] of widths 64/128/256/512, 1x1x1 + BN downsample, AdaptiveAvgPool3d(1),
fc). Parameter names here are the ones vidgrad uses.
"""

import torch.nn as nn
from torchvision.models.video.resnet import R2Plus1dStem


class CTSeparableConv3d(nn.Module):
    """Depthwise (1,3,3) with the spatial stride -> BN -> ReLU -> depthwise (3,1,1) with the temporal
    stride -> pointwise 1x1x1 changing the channels. No biases (a BN follows each conv)."""

    def __init__(self, in_planes, out_planes, stride=1):
        super().__init__()
        self.depthwise_spatial = nn.Conv3d(
            in_planes, in_planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), groups=in_planes, bias=False
        )
        self.bn_spatial = nn.BatchNorm3d(in_planes)
        self.relu_spatial = nn.ReLU(inplace=True)
        self.depthwise_temporal = nn.Conv3d(
            in_planes, in_planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), groups=in_planes, bias=False
        )
        self.pointwise = nn.Conv3d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        x = self.relu_spatial(self.bn_spatial(self.depthwise_spatial(x)))
        return self.pointwise(self.depthwise_temporal(x))


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = CTSeparableConv3d(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = CTSeparableConv3d(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class CTSepNet(nn.Module):
    def __init__(self, classes=400, layers=(2, 2, 2, 2), dropout=0.0):
        super().__init__()
        self.stem = R2Plus1dStem()
        inplanes = 64
        for i, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [BasicBlock(inplanes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(1, layers[i])]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)
