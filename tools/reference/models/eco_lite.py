"""ECO-Lite as in the book's utils/eco.py (seeds 002/003): same module names, same forward.

Written for vidgrad's reference fixtures; `dropout` > 0 adds the official ECO's Dropout before fc_final.
"""

import torch
import torch.nn as nn


def _cbr(mod, name, relu, cin, cout, k, stride=1, pad=0):
    setattr(mod, name, nn.Conv2d(cin, cout, k, stride, pad))
    setattr(mod, name + "_bn", nn.BatchNorm2d(cout))
    setattr(mod, relu, nn.ReLU(inplace=True))
    return [name, name + "_bn", relu]


class BasicConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = []
        self.seq += _cbr(self, "conv1_7x7_s2", "conv1_relu_7x7", 3, 64, 7, 2, 3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
        self.seq += ["pool1_3x3_s2"]
        self.seq += _cbr(self, "conv2_3x3_reduce", "conv2_relu_3x3_reduce", 64, 64, 1)
        self.seq += _cbr(self, "conv2_3x3", "conv2_relu_3x3", 64, 192, 3, 1, 1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
        self.seq += ["pool2_3x3_s2"]

    def forward(self, x):
        for n in self.seq:
            x = getattr(self, n)(x)
        return x


class Inception(nn.Module):
    """Inception 3a / 3b: channels (1x1, 3x3_reduce, 3x3, double_reduce, double, pool_proj)."""

    def __init__(self, tag, cin, c):
        super().__init__()
        p = f"inception_{tag}_"
        r = f"inception_{tag}_relu_"
        self.b1 = _cbr(self, p + "1x1", r + "1x1", cin, c[0], 1)
        self.b2 = _cbr(self, p + "3x3_reduce", r + "3x3_reduce", cin, c[1], 1)
        self.b2 += _cbr(self, p + "3x3", r + "3x3", c[1], c[2], 3, 1, 1)
        self.b3 = _cbr(self, p + "double_3x3_reduce", r + "double_3x3_reduce", cin, c[3], 1)
        self.b3 += _cbr(self, p + "double_3x3_1", r + "double_3x3_1", c[3], c[4], 3, 1, 1)
        self.b3 += _cbr(self, p + "double_3x3_2", r + "double_3x3_2", c[4], c[4], 3, 1, 1)
        setattr(self, p + "pool", nn.AvgPool2d(3, 1, 1))
        self.b4 = [p + "pool"] + _cbr(self, p + "pool_proj", r + "pool_proj", cin, c[5], 1)

    def forward(self, x):
        outs = []
        for branch in (self.b1, self.b2, self.b3, self.b4):
            y = x
            for n in branch:
                y = getattr(self, n)(y)
            outs.append(y)
        return torch.cat(outs, 1)


class InceptionC(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = _cbr(self, "inception_3c_double_3x3_reduce", "inception_3c_relu_double_3x3_reduce", 320, 64, 1)
        self.seq += _cbr(self, "inception_3c_double_3x3_1", "inception_3c_relu_double_3x3_1", 64, 96, 3, 1, 1)

    def forward(self, x):
        for n in self.seq:
            x = getattr(self, n)(x)
        return x


class ECO_2D(nn.Module):
    def __init__(self):
        super().__init__()
        self.basic_conv = BasicConv()
        self.inception_a = Inception("3a", 192, (64, 64, 64, 64, 96, 32))
        self.inception_b = Inception("3b", 256, (64, 64, 96, 64, 96, 64))
        self.inception_c = InceptionC()

    def forward(self, x):
        return self.inception_c(self.inception_b(self.inception_a(self.basic_conv(x))))


def _c3(cin, cout, stride=1):
    return nn.Conv3d(cin, cout, 3, stride, 1)


class Resnet_3D_3(nn.Module):
    def __init__(self):
        super().__init__()
        self.res3a_2 = _c3(96, 128)
        self.res3a_bn = nn.BatchNorm3d(128)
        self.res3a_relu = nn.ReLU(inplace=True)
        self.res3b_1 = _c3(128, 128)
        self.res3b_1_bn = nn.BatchNorm3d(128)
        self.res3b_1_relu = nn.ReLU(inplace=True)
        self.res3b_2 = _c3(128, 128)
        self.res3b_bn = nn.BatchNorm3d(128)
        self.res3b_relu = nn.ReLU(inplace=True)

    def forward(self, x):
        residual = self.res3a_2(x)
        out = self.res3a_relu(self.res3a_bn(residual))
        out = self.res3b_1_relu(self.res3b_1_bn(self.res3b_1(out)))
        out = self.res3b_2(out)
        out = out + residual
        return self.res3b_relu(self.res3b_bn(out))


class Resnet_3D_Down(nn.Module):
    """res_3d_4 / res_3d_5: stride-2 shortcut res{s}a_down plus res{s}a_1 -> bn -> relu -> res{s}a_2."""

    def __init__(self, s, cin, cout):
        super().__init__()
        self.s = s
        n = lambda part: f"res{s}{part}"
        setattr(self, n("a_1"), _c3(cin, cout, 2))
        setattr(self, n("a_1_bn"), nn.BatchNorm3d(cout))
        setattr(self, n("a_1_relu"), nn.ReLU(inplace=True))
        setattr(self, n("a_2"), _c3(cout, cout))
        setattr(self, n("a_down"), _c3(cin, cout, 2))
        setattr(self, n("a_bn"), nn.BatchNorm3d(cout))
        setattr(self, n("a_relu"), nn.ReLU(inplace=True))
        setattr(self, n("b_1"), _c3(cout, cout))
        setattr(self, n("b_1_bn"), nn.BatchNorm3d(cout))
        setattr(self, n("b_1_relu"), nn.ReLU(inplace=True))
        setattr(self, n("b_2"), _c3(cout, cout))
        setattr(self, n("b_bn"), nn.BatchNorm3d(cout))
        setattr(self, n("b_relu"), nn.ReLU(inplace=True))

    def forward(self, x):
        m = lambda part: getattr(self, f"res{self.s}{part}")
        residual = m("a_down")(x)
        out = m("a_2")(m("a_1_relu")(m("a_1_bn")(m("a_1")(x))))
        residual2 = out + residual
        out = m("a_relu")(m("a_bn")(residual2))
        out = m("b_2")(m("b_1_relu")(m("b_1_bn")(m("b_1")(out))))
        out = out + residual2
        return m("b_relu")(m("b_bn")(out))


class ECO_3D(nn.Module):
    def __init__(self, frames, size):
        super().__init__()
        self.res_3d_3 = Resnet_3D_3()
        self.res_3d_4 = Resnet_3D_Down("4", 128, 256)
        self.res_3d_5 = Resnet_3D_Down("5", 256, 512)
        self.global_pool = nn.AvgPool3d((frames // 4, size // 32, size // 32), stride=1, padding=0)

    def forward(self, x):
        out = torch.transpose(x, 1, 2)
        out = self.res_3d_5(self.res_3d_4(self.res_3d_3(out)))
        out = self.global_pool(out)
        return out.view(out.size(0), out.size(1))


class ECO_Lite(nn.Module):
    def __init__(self, classes=400, frames=16, size=224, dropout=0.0):
        super().__init__()
        self.frames, self.size = frames, size
        self.eco_2d = ECO_2D()
        self.eco_3d = ECO_3D(frames, size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc_final = nn.Linear(512, classes)

    def forward(self, x):
        bs, ns, c, h, w = x.shape
        out = self.eco_2d(x.view(-1, c, h, w))
        out = out.view(-1, ns, 96, h // 8, w // 8)
        out = self.eco_3d(out)
        if self.dropout is not None:
            out = self.dropout(out)
        return self.fc_final(out)
