"""The qai-hub-models architectures mobilegen can build offline, with random weights, on `meta`.

Each entry maps a (qai-hub-models model id, component) to a builder returning (model, inputs) at
the input shape its perf.yaml was measured at, and to a family: a model and its sizes together
(leave-one-family-out holds them all out at once). Architectures come from `transformers`
configurations (written out here, no download), from mobilegen's own SD components, and from small
hand definitions of a few torchvision CNNs (torchvision does not install beside torch 2.13 here).
Used only by scripts/build_latency_calibration.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

META = torch.device("meta")
Built = tuple[nn.Module, tuple[Any, ...] | dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    model_id: str  # qai-hub-models folder name
    component: str  # the perf.yaml component
    family: str
    build: Callable[[], Built]
    source: str  # what the architecture is built from
    held_out: bool = False  # stable diffusion / controlnet: never fitted


def _img(h: int, w: int | None = None, c: int = 3) -> tuple[Any, ...]:
    return (torch.empty(1, c, h, w or h, device=META),)


def _ids(n: int) -> dict[str, Any]:
    """Token ids only: an all-ones mask changes no op count, and on `meta` the masking code
    would call .item()."""
    return {"input_ids": torch.zeros(1, n, dtype=torch.long, device=META)}


def _hf(cls_name: str, cfg_name: str, **cfg: Any) -> nn.Module:
    import transformers

    config = getattr(transformers, cfg_name)(**cfg)
    with META:
        return getattr(transformers, cls_name)(config).eval()


# ---------------------------------------------------------------- hand CNNs (torchvision shapes)


def _cbr(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: type = nn.ReLU,
         d: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, d * (k // 2), dilation=d, groups=g,
                                   bias=False), nn.BatchNorm2d(cout), act())


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, groups: int, width: int,
                 basic: bool, dilation: int = 1) -> None:
        super().__init__()
        out = planes * (1 if basic else 4)
        if basic:
            self.body = nn.Sequential(_cbr(cin, planes, 3, stride),
                                      nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(planes))
        else:
            mid = int(planes * width / 64) * groups
            self.body = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, stride, groups,
                                                                d=dilation),
                                      nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
        self.down = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                     if stride != 1 or cin != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def _resnet_body(layers: tuple[int, ...], basic: bool, groups: int, width: int,
                 dilate: bool) -> tuple[list[nn.Module], int]:
    """torchvision's ResNet stages (stride on the 3x3); `dilate`: the segmentation backbone,
    stages 3 and 4 at stride 1 with dilation 2 and 4 (output stride 8)."""
    blocks: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(layers):
        planes = 64 * 2**i
        dil = 2 ** (i - 1) if dilate and i >= 2 else 1
        for j in range(n):
            stride = 2 if j == 0 and i > 0 and dil == 1 else 1
            blocks.append(_Bottleneck(cin, planes, stride, groups, width, basic, dil))
            cin = planes * (1 if basic else 4)
    return blocks, cin


def resnet(layers: tuple[int, ...], basic: bool = False, groups: int = 1,
           width: int = 64) -> nn.Module:
    """torchvision's ResNet / ResNeXt / Wide ResNet."""
    blocks, cin = _resnet_body(layers, basic, groups, width, False)
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*blocks).eval()


class _FCN(nn.Module):
    """torchvision's fcn_resnet50 without its aux head (as qai-hub-models exports it)."""

    def __init__(self) -> None:
        super().__init__()
        blocks, cin = _resnet_body((3, 4, 6, 3), False, 1, 64, True)
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Sequential(_cbr(cin, 512, 3), nn.Conv2d(512, 21, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.backbone(x))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear")


class _DnCNN(nn.Module):
    """DnCNN: 17 3x3 convs of 64 channels on a grayscale image, predicting the noise."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 64, 3, 1, 1), nn.ReLU(),
                               *[_cbr(64, 64, 3) for _ in range(15)], nn.Conv2d(64, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.f(x)


def efficientnet_lite4() -> nn.Module:
    """EfficientNet-Lite4: width 1.4 / depth 1.8, no squeeze-excite, ReLU6, stem and head
    fixed, first and last stage unrepeated."""
    layers: list[nn.Module] = [_cbr(3, 32, 3, 2)]
    cin = 32
    for e, k, s, cout, reps in ((1, 3, 1, 24, 1), (6, 3, 2, 32, 4), (6, 5, 2, 56, 4),
                                (6, 3, 2, 112, 6), (6, 5, 1, 160, 6), (6, 5, 2, 272, 8),
                                (6, 3, 1, 448, 1)):
        for i in range(reps):
            layers.append(_IR(cin, k, cin * e, cout, False, False, s if i == 0 else 1))
            cin = cout
    layers += [_cbr(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


class _Fire(nn.Module):
    def __init__(self, cin: int, sq: int, e: int) -> None:
        super().__init__()
        self.s, self.e1, self.e3 = nn.Conv2d(cin, sq, 1), nn.Conv2d(sq, e, 1), nn.Conv2d(sq, e, 3,
                                                                                        padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.s(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)


def squeezenet1_1() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), _Fire(64, 16, 64), _Fire(128, 16, 64),
            pool(), _Fire(128, 32, 128), _Fire(256, 32, 128), pool(), _Fire(256, 48, 192),
            _Fire(384, 48, 192), _Fire(384, 64, 256), _Fire(512, 64, 256),
            nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


class _SE(nn.Module):
    def __init__(self, c: int, sq: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, sq, 1), nn.ReLU(),
                               nn.Conv2d(sq, c, 1), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class _IR(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, s: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = [] if exp == cin else [_cbr(cin, exp, 1, act=act)]
        layers.append(_cbr(exp, exp, k, s, exp, act=act))
        if se:
            layers.append(_SE(exp, ((exp // 4 + 4) // 8) * 8))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.f, self.res = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.res else self.f(x)


_MNV3 = {  # (k, exp, out, se, hardswish, stride) per block, torchvision's tables
    "large": ([(3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1),
               (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1), (5, 120, 40, 1, 0, 1),
               (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
               (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1),
               (5, 672, 160, 1, 1, 2), (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1)], 1280),
    "small": ([(3, 16, 16, 1, 0, 2), (3, 72, 24, 0, 0, 2), (3, 88, 24, 0, 0, 1),
               (5, 96, 40, 1, 1, 2), (5, 240, 40, 1, 1, 1), (5, 240, 40, 1, 1, 1),
               (5, 120, 48, 1, 1, 1), (5, 144, 48, 1, 1, 1), (5, 288, 96, 1, 1, 2),
               (5, 576, 96, 1, 1, 1), (5, 576, 96, 1, 1, 1)], 1024),
}


def mobilenet_v3(size: str) -> nn.Module:
    table, head = _MNV3[size]
    layers: list[nn.Module] = [_cbr(3, 16, 3, 2, act=nn.Hardswish)]
    cin = 16
    for k, exp, out, se, hs, s in table:
        layers.append(_IR(cin, k, exp, out, bool(se), bool(hs), s))
        cin = out
    layers += [_cbr(cin, 6 * cin, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(6 * cin, head), nn.Hardswish(), nn.Linear(head, 1000)]
    return nn.Sequential(*layers).eval()


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1,
                               bias=False), nn.BatchNorm2d(4 * growth), nn.ReLU(),
                               nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], 1)


def densenet121() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            layers.append(_DenseLayer(c))
            c += 32
        if i < 3:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                       nn.AvgPool2d(2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, 1000)]
    return nn.Sequential(*layers).eval()


# ---------------------------------------------------------------- more torchvision / repo CNNs


class _Inception(nn.Module):
    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, c1, 1)
        self.b2 = nn.Sequential(_cbr(cin, r3, 1), _cbr(r3, c3, 3))
        self.b3 = nn.Sequential(_cbr(cin, r5, 1), _cbr(r5, c5, 3))  # torchvision: 3x3 here
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _cbr(cin, pp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def googlenet() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        _cbr(3, 64, 7, 2), pool(), _cbr(64, 64, 1), _cbr(64, 192, 3), pool(),
        _Inception(192, 64, 96, 128, 16, 32, 32), _Inception(256, 128, 128, 192, 32, 96, 64),
        pool(), _Inception(480, 192, 96, 208, 16, 48, 64),
        _Inception(512, 160, 112, 224, 24, 64, 64), _Inception(512, 128, 128, 256, 24, 64, 64),
        _Inception(512, 112, 144, 288, 32, 64, 64), _Inception(528, 256, 160, 320, 32, 128, 128),
        nn.MaxPool2d(2, 2, ceil_mode=True), _Inception(832, 256, 160, 320, 32, 128, 128),
        _Inception(832, 384, 192, 384, 48, 128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(1024, 1000))


class _Shuffle(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        bf = cout // 2
        self.stride = stride
        self.b1 = (nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                                 nn.BatchNorm2d(cin), _cbr(cin, bf, 1))
                   if stride > 1 else nn.Identity())
        c2 = cin if stride > 1 else bf
        self.b2 = nn.Sequential(_cbr(c2, bf, 1), nn.Conv2d(bf, bf, 3, stride, 1, groups=bf,
                                bias=False), nn.BatchNorm2d(bf), _cbr(bf, bf, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.b2(x2)], 1)
        else:
            out = torch.cat([self.b1(x), self.b2(x)], 1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def shufflenet_v2_x0_5() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for reps, cout in zip((4, 8, 4), (48, 96, 192), strict=True):
        layers += [_Shuffle(cin, cout, 2)] + [_Shuffle(cout, cout, 1) for _ in range(reps - 1)]
        cin = cout
    layers += [_cbr(cin, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


def mnasnet0_5() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 16, 3, 2), _cbr(16, 16, 3, 1, 16),
                               nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)]
    cin = 8
    for cout, k, s, e, reps in ((16, 3, 2, 3, 3), (24, 5, 2, 3, 3), (40, 5, 2, 6, 3),
                                (48, 3, 1, 6, 2), (96, 5, 2, 6, 4), (160, 3, 1, 6, 1)):
        for i in range(reps):
            layers.append(_IR(cin, k, cin * e, cout, False, False, s if i == 0 else 1))
            cin = cout
    layers += [_cbr(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


class _MB(nn.Module):
    """EfficientNetV2's MBConv (SE, SiLU) or FusedMBConv."""

    def __init__(self, cin: int, cout: int, k: int, s: int, e: int, fused: bool) -> None:
        super().__init__()
        mid, act = cin * e, nn.SiLU
        if fused:
            layers: list[nn.Module] = [_cbr(cin, mid if e > 1 else cout, k, s, act=act)]
            if e > 1:
                layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        else:
            sq = max(1, cin // 4)
            layers = [_cbr(cin, mid, 1, act=act), _cbr(mid, mid, k, s, mid, act=act),
                      _SqueezeExcite(mid, sq), nn.Conv2d(mid, cout, 1, bias=False),
                      nn.BatchNorm2d(cout)]
        self.f, self.res = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.res else self.f(x)


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, sq: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, sq, 1), nn.SiLU(),
                               nn.Conv2d(sq, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


def efficientnet_v2_s() -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 24, 3, 2, act=nn.SiLU)]
    cin = 24
    for e, k, s, cout, reps, fused in ((1, 3, 1, 24, 2, True), (4, 3, 2, 48, 4, True),
                                       (4, 3, 2, 64, 4, True), (4, 3, 2, 128, 6, False),
                                       (6, 3, 1, 160, 9, False), (6, 3, 2, 256, 15, False)):
        for i in range(reps):
            layers.append(_MB(cin, cout, k, s if i == 0 else 1, e, fused))
            cin = cout
    layers += [_cbr(cin, 1280, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def _c3(cin: int, cout: int, k: tuple[int, int, int], s: tuple[int, int, int]) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, k, s, tuple(x // 2 for x in k), bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU())


class _Block3d(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, kind: str) -> None:
        super().__init__()
        st = (stride, stride, stride) if kind != "mc3" else (1, stride, stride)

        def conv(i: int, o: int, s: tuple[int, int, int]) -> nn.Module:
            if kind == "r2plus1d":
                mid = (i * o * 27) // (i * 9 + 3 * o)
                return nn.Sequential(_c3(i, mid, (1, 3, 3), (1, s[1], s[2])),
                                     nn.Conv3d(mid, o, (3, 1, 1), (s[0], 1, 1), (1, 0, 0),
                                               bias=False))
            return nn.Conv3d(i, o, (1 if kind == "mc3" else 3, 3, 3), s,
                             (0 if kind == "mc3" else 1, 1, 1), bias=False)
        self.body = nn.Sequential(conv(cin, planes, st), nn.BatchNorm3d(planes), nn.ReLU(),
                                  conv(planes, planes, (1, 1, 1)), nn.BatchNorm3d(planes))
        self.down = (nn.Sequential(nn.Conv3d(cin, planes, 1, st, bias=False),
                                   nn.BatchNorm3d(planes)) if stride != 1 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def video_resnet(kind: str) -> nn.Module:
    """torchvision's r3d_18 / mc3_18 / r2plus1d_18 (mc3: 3D convs in layer1 only)."""
    if kind == "r2plus1d":
        stem: nn.Module = nn.Sequential(_c3(3, 45, (1, 7, 7), (1, 2, 2)),
                                        _c3(45, 64, (3, 1, 1), (1, 1, 1)))
    else:
        stem = _c3(3, 64, (3, 7, 7), (1, 2, 2))
    layers: list[nn.Module] = [stem]
    cin = 64
    for i, planes in enumerate((64, 128, 256, 512)):
        k = "r3d" if kind == "mc3" and i == 0 else kind
        layers += [_Block3d(cin, planes, 1 if i == 0 else 2, k), _Block3d(planes, planes, 1, k)]
        cin = planes
    layers += [nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(512, 400)]
    return nn.Sequential(*layers)


class _UNetSeg(nn.Module):
    """milesial/Pytorch-UNet (transposed-conv upsampling), the unet_segmentation model."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        dc = lambda i, o: nn.Sequential(_cbr(i, o, 3), _cbr(o, o, 3))
        w = (64, 128, 256, 512, 1024)
        self.inc = dc(3, 64)
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), dc(w[i], w[i + 1]))
                                   for i in range(4))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, 2)
                                 for i in reversed(range(4)))
        self.convs = nn.ModuleList(dc(w[i + 1], w[i]) for i in reversed(range(4)))
        self.out = nn.Conv2d(64, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for d in self.downs:
            skips.append(d(skips[-1]))
        x = skips.pop()
        for up, conv in zip(self.ups, self.convs, strict=True):
            x = conv(torch.cat([skips.pop(), up(x)], 1))
        return self.out(x)


class _RDB(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1)
                                   for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, c in enumerate(self.convs):
            y = c(torch.cat(feats, 1))
            feats.append(nn.functional.leaky_relu(y, 0.2) if i < 4 else y)
        return x + 0.2 * feats[-1]


class _RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN x4plus generator: 23 residual-in-residual dense blocks, x4."""

    def __init__(self, blocks: int = 23) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 64, 3, 1, 1)
        self.body = nn.Sequential(*[nn.Sequential(_RDB(), _RDB(), _RDB()) for _ in range(blocks)])
        self.trunk, self.up1, self.up2 = (nn.Conv2d(64, 64, 3, 1, 1) for _ in range(3))
        self.hr, self.last = nn.Conv2d(64, 64, 3, 1, 1), nn.Conv2d(64, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.first(x)
        f = f + self.trunk(self.body(f))
        act = lambda t: nn.functional.leaky_relu(t, 0.2)
        f = act(self.up1(nn.functional.interpolate(f, scale_factor=2, mode="nearest")))
        f = act(self.up2(nn.functional.interpolate(f, scale_factor=2, mode="nearest")))
        return self.last(act(self.hr(f)))


class _PlainSR(nn.Module):
    """A plain conv stack + depth-to-space x4 with the upsampled input added: Real-ESRGAN's
    SRVGGNetCompact (PReLU) and QuickSRNet (ReLU)."""

    def __init__(self, ch: int, layers: int, prelu: bool) -> None:
        super().__init__()
        act = (lambda: nn.PReLU(ch)) if prelu else nn.ReLU
        body: list[nn.Module] = [nn.Conv2d(3, ch, 3, 1, 1), act()]
        for _ in range(layers):
            body += [nn.Conv2d(ch, ch, 3, 1, 1), act()]
        body += [nn.Conv2d(ch, 48, 3, 1, 1), nn.PixelShuffle(4)]
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + nn.functional.interpolate(x, scale_factor=4, mode="nearest")


# ------------------------------------------------ more hand CNNs (issue 23, quantized rows)


def _bc(cin: int, cout: int, k: int | tuple[int, int], s: int = 1,
        p: int | tuple[int, int] = 0, act: type | None = nn.ReLU, d: int = 1,
        g: int = 1) -> nn.Module:
    """conv (no bias) + batch norm (+ activation), explicit padding."""
    layers = [nn.Conv2d(cin, cout, k, s, p, dilation=d, groups=g, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class _Cat(nn.Module):
    """Run the branches on one input and concatenate them on the channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.b = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.b], 1)


def _inc_a(cin: int, pf: int) -> nn.Module:
    return _Cat(_bc(cin, 64, 1),
                nn.Sequential(_bc(cin, 48, 1), _bc(48, 64, 5, p=2)),
                nn.Sequential(_bc(cin, 64, 1), _bc(64, 96, 3, p=1), _bc(96, 96, 3, p=1)),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, pf, 1)))


def _inc_c(cin: int, c7: int) -> nn.Module:
    a, b = (1, 7), (7, 1)
    pa, pb = (0, 3), (3, 0)
    return _Cat(_bc(cin, 192, 1),
                nn.Sequential(_bc(cin, c7, 1), _bc(c7, c7, a, p=pa), _bc(c7, 192, b, p=pb)),
                nn.Sequential(_bc(cin, c7, 1), _bc(c7, c7, b, p=pb), _bc(c7, c7, a, p=pa),
                              _bc(c7, c7, b, p=pb), _bc(c7, 192, a, p=pa)),
                nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, 192, 1)))


class _IncE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1, self.b3, self.d1 = _bc(cin, 320, 1), _bc(cin, 384, 1), _bc(cin, 448, 1)
        self.b3a, self.b3b = _bc(384, 384, (1, 3), p=(0, 1)), _bc(384, 384, (3, 1), p=(1, 0))
        self.d2 = _bc(448, 384, 3, p=1)
        self.d3a, self.d3b = _bc(384, 384, (1, 3), p=(0, 1)), _bc(384, 384, (3, 1), p=(1, 0))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3, d = self.b3(x), self.d2(self.d1(x))
        return torch.cat([self.b1(x), self.b3a(b3), self.b3b(b3), self.d3a(d), self.d3b(d),
                          self.pool(x)], 1)


def inception_v3() -> nn.Module:
    """torchvision's inception_v3 in eval (no aux head; transform_input as its ImageNet weights
    set it: three per-channel affine ops)."""
    class _In(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(
                _bc(3, 32, 3, 2), _bc(32, 32, 3), _bc(32, 64, 3, p=1), nn.MaxPool2d(3, 2),
                _bc(64, 80, 1), _bc(80, 192, 3), nn.MaxPool2d(3, 2),
                _inc_a(192, 32), _inc_a(256, 64), _inc_a(288, 64),
                _Cat(_bc(288, 384, 3, 2), nn.Sequential(_bc(288, 64, 1), _bc(64, 96, 3, p=1),
                                                        _bc(96, 96, 3, 2)), nn.MaxPool2d(3, 2)),
                _inc_c(768, 128), _inc_c(768, 160), _inc_c(768, 160), _inc_c(768, 192),
                _Cat(nn.Sequential(_bc(768, 192, 1), _bc(192, 320, 3, 2)),
                     nn.Sequential(_bc(768, 192, 1), _bc(192, 192, (1, 7), p=(0, 3)),
                                   _bc(192, 192, (7, 1), p=(3, 0)), _bc(192, 192, 3, 2)),
                     nn.MaxPool2d(3, 2)),
                _IncE(1280), _IncE(2048), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(2048, 1000))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.cat([x[:, i:i + 1] * 0.5 + 0.1 for i in range(3)], 1)
            return self.f(x)
    return _In()


class _SRResNet(nn.Module):
    """SRGAN's generator (Lornatang/SRGAN-PyTorch SRResNet x4): 16 residual blocks of 64
    channels, PReLU, two pixel-shuffle x2 stages."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 64, 9, 1, 4), nn.PReLU())
        self.res = nn.ModuleList(nn.Sequential(_bc(64, 64, 3, p=1, act=nn.PReLU),
                                               _bc(64, 64, 3, p=1, act=None))
                                 for _ in range(16))
        self.c2 = _bc(64, 64, 3, p=1, act=None)
        self.up = nn.Sequential(*[m for _ in range(2) for m in
                                  (nn.Conv2d(64, 256, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU())])
        self.c3 = nn.Conv2d(64, 3, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = y = self.c1(x)
        for r in self.res:
            y = y + r(y)
        return torch.clamp(self.c3(self.up(self.c2(y) + f)), 0.0, 1.0)


class _PoseNet(nn.Module):
    """rwightman/posenet-pytorch MobileNetV1 (1.01 -> the 1.0 channels), output stride 16
    (the last stride-2 layer and the ones after it dilated), ReLU6, four 1x1 heads."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()]
        cin, stride, rate = 32, 2, 1
        for s, cout in ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                        *[(1, 512)] * 5, (2, 1024), (1, 1024)):
            if stride == 16:
                d, s, rate = rate, 1, rate * s
            else:
                d, stride = 1, stride * s
            layers += [nn.Conv2d(cin, cin, 3, s, d, dilation=d, groups=cin), nn.ReLU6(),
                       nn.Conv2d(cin, cout, 1), nn.ReLU6()]
            cin = cout
        self.f = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Conv2d(1024, c, 1) for c in (17, 34, 32, 32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.f(x)
        h, *rest = (m(f) for m in self.heads)
        return (torch.sigmoid(h), *rest)


def _mnv2_ir(cin: int, cout: int, s: int, t: int, d: int = 1) -> nn.Module:
    mid = cin * t
    layers: list[nn.Module] = [] if t == 1 else [_bc(cin, mid, 1, act=nn.ReLU6)]
    layers += [_bc(mid, mid, 3, s, d, nn.ReLU6, d, mid), _bc(mid, cout, 1, act=None)]
    return _Residual(nn.Sequential(*layers), s == 1 and cin == cout)


class _Residual(nn.Module):
    def __init__(self, f: nn.Module, res: bool) -> None:
        super().__init__()
        self.f, self.res = f, res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.res else self.f(x)


class _DeepLabV3PlusMNV2(nn.Module):
    """jfzhang95/pytorch-deeplab-xception DeepLab(backbone="mobilenet", output_stride=16):
    MobileNetV2 features (the last two stages dilated), ASPP (rates 6 / 12 / 18 + image pool)
    and the decoder on the stride-4 features. Its fixed_padding pads are folded into the
    convolutions' padding here."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        feats: list[nn.Module] = [_bc(3, 32, 3, 2, 1, nn.ReLU6)]
        cin, stride, rate = 32, 2, 1
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
            if stride == 16:
                d, s, rate = rate, 1, rate * s
            else:
                d, stride = 1, stride * s
            for i in range(n):
                feats.append(_mnv2_ir(cin, c, s if i == 0 else 1, t, d))
                cin = c
        self.low, self.high = nn.Sequential(*feats[:4]), nn.Sequential(*feats[4:])
        self.aspp = nn.ModuleList([_bc(320, 256, 1)] + [_bc(320, 256, 3, p=r, d=r)
                                                         for r in (6, 12, 18)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _bc(320, 256, 1))
        self.proj = _bc(1280, 256, 1)
        self.low_proj = _bc(24, 48, 1)
        self.last = nn.Sequential(_bc(304, 256, 3, p=1), _bc(256, 256, 3, p=1),
                                  nn.Conv2d(256, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low(x)
        h = self.high(low)
        p = nn.functional.interpolate(self.pool(h), size=h.shape[-2:], mode="bilinear",
                                      align_corners=True)
        h = self.proj(torch.cat([m(h) for m in self.aspp] + [p], 1))
        h = nn.functional.interpolate(h, size=low.shape[-2:], mode="bilinear",
                                      align_corners=True)
        y = self.last(torch.cat([h, self.low_proj(low)], 1))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                         align_corners=True)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """qai-hub-models' in-forward image normalization: one subtract and one divide (the
    per-channel means and deviations cost the same ops as these scalars)."""
    return (x - 0.45) / 0.225


class _PSPNet(nn.Module):
    """hszhao/semseg PSPNet(layers=101, classes=150, zoom_factor=8) in eval: ResNet-101 with the
    deep (three-conv) stem, layers 3 / 4 dilated 2 / 4 (output stride 8), the pyramid pooling
    module (bins 1, 2, 3, 6), the 3x3 head and the x8 bilinear resize; no aux head. As
    qai-hub-models runs it (models/pspnet/model.py): the image and its horizontal flip as one
    batch of 2, normalized, the class softmax, and the flipped map averaged back."""

    def __init__(self, classes: int = 150) -> None:
        super().__init__()
        blocks, cin = _resnet_body((3, 4, 23, 3), False, 1, 64, True)
        stem = [_bc(3, 64, 3, 2, 1), _bc(64, 64, 3, 1, 1), _bc(64, 128, 3, 1, 1),
                nn.MaxPool2d(3, 2, 1)]
        first = blocks[2]  # the first bottleneck reads the 128-channel deep stem
        first.body[0] = _cbr(128, 64, 1)
        first.down = nn.Sequential(nn.Conv2d(128, 256, 1, bias=False), nn.BatchNorm2d(256))
        self.backbone = nn.Sequential(*stem, *blocks[2:])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), _bc(cin, 512, 1))
                                 for b in (1, 2, 3, 6))
        self.cls = nn.Sequential(_bc(2 * cin, 512, 3, p=1), nn.Conv2d(512, classes, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = _normalize(torch.cat([image, torch.flip(image, [3])], 0))
        f = self.backbone(x)
        size = f.shape[-2:]
        f = torch.cat([f] + [nn.functional.interpolate(m(f), size=size, mode="bilinear",
                                                       align_corners=True)
                             for m in self.ppm], 1)
        out = torch.softmax(nn.functional.interpolate(self.cls(f), size=x.shape[-2:],
                                                      mode="bilinear", align_corners=True), 1)
        return ((out[0] + torch.flip(out[1], [2])) / 2).unsqueeze(0)


class _MobileFaceNet(nn.Module):
    """foamliu/MobileFaceNet (ReLU6 inverted-residual bottlenecks, a ReLU depthwise-separable
    stem block, 7x7 depthwise linear GDConv, 128-d) as qai-hub-models runs it: two faces, each
    with its horizontal flip (batch 4), the flipped embedding added to the original's."""

    def __init__(self) -> None:
        super().__init__()
        r6 = nn.ReLU6
        layers: list[nn.Module] = [_bc(3, 64, 3, 2, 1, r6), _bc(64, 64, 3, 1, 1, g=64),
                                   _bc(64, 64, 1)]
        cin = 64
        for t, c, n, s in ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2),
                           (2, 128, 2, 1)):
            for i in range(n):
                st, mid = s if i == 0 else 1, cin * t
                layers.append(_Residual(nn.Sequential(
                    _bc(cin, mid, 1, act=r6), _bc(mid, mid, 3, st, 1, r6, g=mid),
                    _bc(mid, c, 1, act=None)), st == 1 and cin == c))
                cin = c
        layers += [_bc(128, 512, 1, act=r6), _bc(512, 512, 7, act=None, g=512),
                   _bc(512, 128, 1, act=None), nn.Flatten()]
        self.f = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _normalize(a), _normalize(b)
        e = self.f(torch.cat([a, torch.flip(a, [-1]), b, torch.flip(b, [-1])], 0))
        return torch.stack([e[0] + e[1], e[2] + e[3]], 0)


class _LayerNorm2d(nn.Module):
    """NAFNet's LayerNorm2d as qai-hub-models patches it (AutoLayerNorm2d): NCHW -> NHWC,
    F.layer_norm over the channels, back to NCHW."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight,
                                     self.bias, 1e-6)
        return y.permute(0, 3, 1, 2)


class _NAFBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.n1, self.n2 = _LayerNorm2d(c), _LayerNorm2d(c)
        self.c1, self.c2 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, 2 * c, 3, 1, 1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.c3, self.c4, self.c5 = nn.Conv2d(c, c, 1), nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.c2(self.c1(self.n1(inp))).chunk(2, 1)
        x = x1 * x2
        y = inp + self.c3(x * self.sca(x)) * self.beta
        x1, x2 = self.c4(self.n2(y)).chunk(2, 1)
        return y + self.c5(x1 * x2) * self.gamma


class _NAFNet(nn.Module):
    """megvii-research/NAFNet (width 64), its input padded to a multiple of 16 as the source
    does; `enc`, `mid`, `dec`: blocks per stage. qai-hub-models keeps the global average pools
    (its Local_Base.convert patch is a no-op) and uses AutoLayerNorm2d."""

    def __init__(self, enc: tuple[int, ...], mid: int, dec: tuple[int, ...], w: int = 64) -> None:
        super().__init__()
        self.intro, self.ending = nn.Conv2d(3, w, 3, 1, 1), nn.Conv2d(w, 3, 3, 1, 1)
        self.encs, self.downs, self.ups, self.decs = (nn.ModuleList() for _ in range(4))
        c = w
        for n in enc:
            self.encs.append(nn.Sequential(*[_NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, 2))
            c *= 2
        self.mid = nn.Sequential(*[_NAFBlock(c) for _ in range(mid)])
        for n in dec:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decs.append(nn.Sequential(*[_NAFBlock(c) for _ in range(n)]))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        x0 = nn.functional.pad(inp, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16))
        x, skips = self.intro(x0), []
        for e, d in zip(self.encs, self.downs, strict=True):
            x = e(x)
            skips.append(x)
            x = d(x)
        x = self.mid(x)
        for u, d, s in zip(self.ups, self.decs, reversed(skips), strict=True):
            x = d(u(x) + s)
        return (self.ending(x) + x0)[..., :h, :w]


class _VGG3D(nn.Module):
    """deepbox's 3D-box head: torchvision vgg19_bn features, then orientation (L2-normalised
    per bin), confidence and dimension MLPs on the flattened 7x7x512 map (bins=2)."""

    def __init__(self, bins: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                  512, 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        mlp = lambda h, o: nn.Sequential(nn.Linear(512 * 49, h), nn.ReLU(), nn.Linear(h, h),
                                         nn.ReLU(), nn.Linear(h, o))
        self.bins = bins
        self.orient, self.conf, self.dim = mlp(256, 2 * bins), mlp(256, bins), mlp(512, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.features(x).flatten(1)
        o = nn.functional.normalize(self.orient(f).view(-1, self.bins, 2), dim=2)
        return o, self.conf(f), self.dim(f)


def inception_v4() -> nn.Module:
    """timm's inception_v4 (tf_in1k): stem with Mixed 3a / 4a / 5a, 4 x A, reduction A,
    7 x B, reduction B, 3 x C; batch norm folded."""
    a, b = (1, 7), (7, 1)
    pa, pb = (0, 3), (3, 0)
    pool = lambda cin, c: nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                        _bc(cin, c, 1))
    inc_a = lambda: _Cat(_bc(384, 96, 1), nn.Sequential(_bc(384, 64, 1), _bc(64, 96, 3, p=1)),
                         nn.Sequential(_bc(384, 64, 1), _bc(64, 96, 3, p=1),
                                       _bc(96, 96, 3, p=1)), pool(384, 96))
    inc_b = lambda: _Cat(_bc(1024, 384, 1),
                         nn.Sequential(_bc(1024, 192, 1), _bc(192, 224, a, p=pa),
                                       _bc(224, 256, b, p=pb)),
                         nn.Sequential(_bc(1024, 192, 1), _bc(192, 192, b, p=pb),
                                       _bc(192, 224, a, p=pa), _bc(224, 224, b, p=pb),
                                       _bc(224, 256, a, p=pa)), pool(1024, 128))

    class _IncC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b0 = _bc(1536, 256, 1)
            self.b10, self.b20 = _bc(1536, 384, 1), _bc(1536, 384, 1)
            self.b1a, self.b1b = _bc(384, 256, (1, 3), p=(0, 1)), _bc(384, 256, (3, 1), p=(1, 0))
            self.b2 = nn.Sequential(_bc(384, 448, (3, 1), p=(1, 0)),
                                    _bc(448, 512, (1, 3), p=(0, 1)))
            self.b3a, self.b3b = _bc(512, 256, (1, 3), p=(0, 1)), _bc(512, 256, (3, 1), p=(1, 0))
            self.pool = pool(1536, 256)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x1, x2 = self.b10(x), self.b2(self.b20(x))
            return torch.cat([self.b0(x), self.b1a(x1), self.b1b(x1), self.b3a(x2),
                              self.b3b(x2), self.pool(x)], 1)

    return nn.Sequential(
        _bc(3, 32, 3, 2), _bc(32, 32, 3), _bc(32, 64, 3, p=1),
        _Cat(nn.MaxPool2d(3, 2), _bc(64, 96, 3, 2)),
        _Cat(nn.Sequential(_bc(160, 64, 1), _bc(64, 96, 3)),
             nn.Sequential(_bc(160, 64, 1), _bc(64, 64, a, p=pa), _bc(64, 64, b, p=pb),
                           _bc(64, 96, 3))),
        _Cat(_bc(192, 192, 3, 2), nn.MaxPool2d(3, 2)),
        *[inc_a() for _ in range(4)],
        _Cat(_bc(384, 384, 3, 2), nn.Sequential(_bc(384, 192, 1), _bc(192, 224, 3, p=1),
                                                _bc(224, 256, 3, 2)), nn.MaxPool2d(3, 2)),
        *[inc_b() for _ in range(7)],
        _Cat(nn.Sequential(_bc(1024, 192, 1), _bc(192, 192, 3, 2)),
             nn.Sequential(_bc(1024, 256, 1), _bc(256, 256, a, p=pa), _bc(256, 320, b, p=pb),
                           _bc(320, 320, 3, 2)), nn.MaxPool2d(3, 2)),
        *[_IncC() for _ in range(3)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1536, 1000))


# ---------------------------------------------------------------- ultralytics YOLOv8


def _yconv(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Module:
    return _bc(cin, cout, k, s, k // 2, nn.SiLU)


class _C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2 = _yconv(cin, 2 * c), _yconv((2 + n) * c, cout)
        self.m = nn.ModuleList(_Residual(nn.Sequential(_yconv(c, c, 3), _yconv(c, c, 3)),
                                         shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _yconv(cin, cin // 2), _yconv(2 * cin, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


_YOLO_SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "x": (1.00, 1.25, 512)}


class _YOLOv8(nn.Module):
    """ultralytics yolov8{n,s,x} (detect / segment / obb heads) with qai-hub-models'
    in-graph postprocessing: DFL decode to boxes, class sigmoid, best class score and index
    (segment: also the 32 mask coefficients and the prototypes; obb: the angle)."""

    def __init__(self, scale: str, task: str = "detect", nc: int = 80) -> None:
        super().__init__()
        dm, wm, mx = _YOLO_SCALES[scale]
        ch = lambda c: int(-(-min(c, mx) * wm // 8) * 8)
        rep = lambda n: max(round(n * dm), 1)
        c = [ch(x) for x in (64, 128, 256, 512, 1024)]
        self.b1 = nn.Sequential(_yconv(3, c[0], 3, 2), _yconv(c[0], c[1], 3, 2),
                                _C2f(c[1], c[1], rep(3), True), _yconv(c[1], c[2], 3, 2),
                                _C2f(c[2], c[2], rep(6), True))
        self.b2 = nn.Sequential(_yconv(c[2], c[3], 3, 2), _C2f(c[3], c[3], rep(6), True))
        self.b3 = nn.Sequential(_yconv(c[3], c[4], 3, 2), _C2f(c[4], c[4], rep(3), True),
                                _SPPF(c[4], c[4]))
        self.h1 = _C2f(c[3] + c[4], c[3], rep(3), False)
        self.h2 = _C2f(c[2] + c[3], c[2], rep(3), False)
        self.d1, self.h3 = _yconv(c[2], c[2], 3, 2), _C2f(c[2] + c[3], c[3], rep(3), False)
        self.d2, self.h4 = _yconv(c[3], c[3], 3, 2), _C2f(c[3] + c[4], c[4], rep(3), False)
        chs = (c[2], c[3], c[4])
        c2, c3 = max(16, chs[0] // 4, 64), max(chs[0], min(nc, 100))
        head = lambda x, m, o: nn.Sequential(_yconv(x, m, 3), _yconv(m, m, 3), nn.Conv2d(m, o, 1))
        self.box = nn.ModuleList(head(x, c2, 64) for x in chs)
        self.cls = nn.ModuleList(head(x, c3, nc) for x in chs)
        self.task, self.nc = task, nc
        if task == "segment":
            c4, npr = max(chs[0] // 4, 32), ch(256)
            self.extra = nn.ModuleList(head(x, c4, 32) for x in chs)
            self.proto = nn.Sequential(_yconv(chs[0], npr, 3), nn.ConvTranspose2d(npr, npr, 2, 2),
                                       _yconv(npr, npr, 3), _yconv(npr, 32))
        elif task == "obb":
            c4 = max(chs[0] // 4, 1)
            self.extra = nn.ModuleList(head(x, c4, 1) for x in chs)
        self.dfl = nn.Conv2d(16, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        up = lambda t: nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")
        p3 = self.b1(x)
        p4 = self.b2(p3)
        p5 = self.b3(p4)
        t4 = self.h1(torch.cat([up(p5), p4], 1))
        o3 = self.h2(torch.cat([up(t4), p3], 1))
        o4 = self.h3(torch.cat([self.d1(o3), t4], 1))
        o5 = self.h4(torch.cat([self.d2(o4), p5], 1))
        feats = self._feats = (o3, o4, o5)
        flat = lambda ms: torch.cat([m(f).flatten(2) for m, f in zip(ms, feats, strict=True)], 2)
        box, cls = flat(self.box), flat(self.cls)
        a = box.shape[-1]
        d = self.dfl(box.view(1, 4, 16, a).transpose(2, 1).softmax(1)).view(1, 4, a)
        anchors = torch.zeros(1, 2, a, device=x.device)
        strides = torch.ones(1, 1, a, device=x.device)
        lt, rb = d.chunk(2, 1)
        boxes = torch.cat([anchors - lt, anchors + rb], 1) * strides
        scores = cls.sigmoid()
        best, idx = scores.max(1)
        out: tuple[torch.Tensor, ...] = (boxes.transpose(1, 2), best, idx)
        if self.task == "segment":
            out += (flat(self.extra).transpose(1, 2), self.proto(o3))
        elif self.task == "obb":
            out += ((flat(self.extra).sigmoid() - 0.25) * 3.14159,)
        return out


def _yconv_g(cin: int, cout: int, k: int = 1, s: int = 1, g: int = 1,
             act: bool = True) -> nn.Module:
    return _bc(cin, cout, k, s, k // 2, nn.SiLU if act else None, g=g)


class _C3k2(_C2f):
    """YOLO11's C3k2: C2f with C3k (c3k) or e=0.5 bottlenecks (C2f's forward)."""

    def __init__(self, cin: int, cout: int, n: int, c3k: bool, e: float = 0.5) -> None:
        nn.Module.__init__(self)
        c = int(cout * e)
        self.cv1, self.cv2 = _yconv(cin, 2 * c), _yconv((2 + n) * c, cout)
        bott = lambda ci, h: _Residual(nn.Sequential(_yconv(ci, h, 3), _yconv(h, ci, 3)), True)
        self.m = nn.ModuleList(_C3k(c) if c3k else bott(c, c // 2) for _ in range(n))


class _C3k(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.cv1, self.cv2, self.cv3 = _yconv(c, h), _yconv(c, h), _yconv(2 * h, c)
        self.m = nn.Sequential(*[_Residual(nn.Sequential(_yconv(h, h, 3), _yconv(h, h, 3)), True)
                                 for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class _PSA(nn.Module):
    """YOLO11's PSABlock: conv-projected multi-head attention over the H*W positions (key dim
    half the head dim), a depthwise positional conv on v, and a 2x conv FFN."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.nh = max(c // 64, 1)
        self.hd = c // self.nh
        self.kd = self.hd // 2
        self.qkv = _yconv_g(c, c + 2 * self.kd * self.nh, act=False)
        self.proj, self.pe = _yconv_g(c, c, act=False), _yconv_g(c, c, 3, g=c, act=False)
        self.ffn = nn.Sequential(_yconv(c, 2 * c), _yconv_g(2 * c, c, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.nh, 2 * self.kd + self.hd, h * w).split(
            [self.kd, self.kd, self.hd], 2)
        attn = ((q.transpose(-2, -1) @ k) * self.kd ** -0.5).softmax(-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        x = x + self.proj(y)
        return x + self.ffn(x)


class _C2PSA(nn.Module):
    def __init__(self, c1: int, n: int) -> None:
        super().__init__()
        self.c = c1 // 2
        self.cv1, self.cv2 = _yconv(c1, 2 * self.c), _yconv(2 * self.c, c1)
        self.m = nn.Sequential(*[_PSA(self.c) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, self.m(b)], 1))


class _YOLO11(_YOLOv8):
    """ultralytics yolo11n (detect / segment / pose): C3k2 stages, SPPF + C2PSA, the head's
    class branch with depthwise convs; the same in-graph postprocessing as _YOLOv8 (pose: the
    17 keypoints decoded, 3 values each)."""

    def __init__(self, task: str = "detect", nc: int = 80) -> None:
        super().__init__("n", task if task != "pose" else "detect", nc)
        c = [16, 32, 64, 128, 256]
        self.b1 = nn.Sequential(_yconv(3, c[0], 3, 2), _yconv(c[0], c[1], 3, 2),
                                _C3k2(c[1], c[2], 1, False, 0.25), _yconv(c[2], c[2], 3, 2),
                                _C3k2(c[2], c[3], 1, False, 0.25))
        self.b2 = nn.Sequential(_yconv(c[3], c[3], 3, 2), _C3k2(c[3], c[3], 1, True))
        self.b3 = nn.Sequential(_yconv(c[3], c[4], 3, 2), _C3k2(c[4], c[4], 1, True),
                                _SPPF(c[4], c[4]), _C2PSA(c[4], 1))
        self.h1 = _C3k2(c[3] + c[4], c[3], 1, False)
        self.h2 = _C3k2(2 * c[3], c[2], 1, False)
        self.h3 = _C3k2(c[2] + c[3], c[3], 1, False)
        self.h4 = _C3k2(c[3] + c[4], c[4], 1, True)
        chs = (c[2], c[3], c[4])
        c3 = max(chs[0], min(nc, 100))
        self.cls = nn.ModuleList(nn.Sequential(
            _yconv_g(x, x, 3, g=x), _yconv(x, c3), _yconv_g(c3, c3, 3, g=c3), _yconv(c3, c3),
            nn.Conv2d(c3, nc, 1)) for x in chs)
        if task == "pose":
            c4 = max(chs[0] // 4, 51)
            self.extra = nn.ModuleList(nn.Sequential(_yconv(x, c4, 3), _yconv(c4, c4, 3),
                                                     nn.Conv2d(c4, 51, 1)) for x in chs)
        self.pose = task == "pose"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = super().forward(x)
        if not self.pose:
            return out
        feats = self._feats
        k = torch.cat([m(f).flatten(2) for m, f in zip(self.extra, feats, strict=True)], 2)
        k = k.view(1, 17, 3, -1)
        xy = (k[:, :, :2] * 2.0 + 0.5) * 8.0
        return (*out, torch.cat([xy, k[:, :, 2:].sigmoid()], 2))


def _det_post(reg: torch.Tensor, obj: torch.Tensor,
              cls: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """qai-hub-models' detector postprocessing kept in the graph: boxes to corners, the best
    class score (times objectness) and its index."""
    xy, wh = reg[..., :2], reg[..., 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    best, idx = (cls * obj).max(-1)
    return boxes, best, idx


class _CSP(nn.Module):
    """YOLOX's CSPLayer (half-width bottlenecks: 1x1 then 3x3)."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        h = cout // 2
        self.cv1, self.cv2, self.cv3 = _yconv(cin, h), _yconv(cin, h), _yconv(2 * h, cout)
        self.m = nn.Sequential(*[_Residual(nn.Sequential(_yconv(h, h), _yconv(h, h, 3)), shortcut)
                                 for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class _YOLOX(nn.Module):
    """Megvii YOLOX-S (depth 0.33, width 0.5): Focus stem, CSPDarknet with SPP, PAFPN, the
    decoupled head, grid decode and qai-hub-models' postprocessing."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.stem = _yconv(12, 32, 3)
        self.d2 = nn.Sequential(_yconv(32, 64, 3, 2), _CSP(64, 64, 1))
        self.d3 = nn.Sequential(_yconv(64, 128, 3, 2), _CSP(128, 128, 3))
        self.d4 = nn.Sequential(_yconv(128, 256, 3, 2), _CSP(256, 256, 3))
        self.d5a = nn.Sequential(_yconv(256, 512, 3, 2), _yconv(512, 256))
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.d5b = nn.Sequential(_yconv(1024, 512), _CSP(512, 512, 1, False))
        self.lat0, self.p4 = _yconv(512, 256), _CSP(512, 256, 1, False)
        self.red1, self.p3 = _yconv(256, 128), _CSP(256, 128, 1, False)
        self.bu2, self.n3 = _yconv(128, 128, 3, 2), _CSP(256, 256, 1, False)
        self.bu1, self.n4 = _yconv(256, 256, 3, 2), _CSP(512, 512, 1, False)
        h = 128  # the head's width, 256 x 0.5
        self.stems = nn.ModuleList(_yconv(c, h) for c in (128, 256, 512))
        two = lambda: nn.Sequential(_yconv(h, h, 3), _yconv(h, h, 3))
        self.cls_convs, self.reg_convs = (nn.ModuleList(two() for _ in range(3)) for _ in range(2))
        self.cls_pred = nn.ModuleList(nn.Conv2d(h, nc, 1) for _ in range(3))
        self.reg_pred = nn.ModuleList(nn.Conv2d(h, 4, 1) for _ in range(3))
        self.obj_pred = nn.ModuleList(nn.Conv2d(h, 1, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        up = lambda t: nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")
        x = self.stem(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                 x[..., 1::2, 1::2]], 1))
        x2 = self.d3(self.d2(x))
        x1 = self.d4(x2)
        y = self.d5a(x1)
        x0 = self.d5b(torch.cat([y] + [p(y) for p in self.pools], 1))
        f0 = self.lat0(x0)
        f1 = self.red1(self.p4(torch.cat([up(f0), x1], 1)))
        o2 = self.p3(torch.cat([up(f1), x2], 1))
        o1 = self.n3(torch.cat([self.bu2(o2), f1], 1))
        o0 = self.n4(torch.cat([self.bu1(o1), f0], 1))
        outs = []
        for i, f in enumerate((o2, o1, o0)):
            f = self.stems[i](f)
            r, c = self.reg_convs[i](f), self.cls_convs[i](f)
            outs.append(torch.cat([self.reg_pred[i](r), self.obj_pred[i](r).sigmoid(),
                                   self.cls_pred[i](c).sigmoid()], 1).flatten(2))
        o = torch.cat(outs, 2).transpose(1, 2)
        grid, stride = torch.zeros(1, o.shape[1], 2, device=o.device), 8.0
        reg = torch.cat([(o[..., :2] + grid) * stride, o[..., 2:4].exp() * stride], -1)
        return _det_post(reg, o[..., 4:5], o[..., 5:])


def _lconv(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Module:
    return _bc(cin, cout, k, s, k // 2, lambda: nn.LeakyReLU(0.1))


class _ELANTiny(nn.Module):
    """YOLOv7-tiny's ELAN block: two 1x1 branches, two 3x3 on one of them, concat of four,
    a 1x1 to `cout`."""

    def __init__(self, cin: int, c: int, cout: int) -> None:
        super().__init__()
        self.a, self.b = _lconv(cin, c), _lconv(cin, c)
        self.c, self.d = _lconv(c, c, 3), _lconv(c, c, 3)
        self.out = _lconv(4 * c, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b(x)
        c = self.c(b)
        return self.out(torch.cat([self.d(c), c, b, self.a(x)], 1))


class _YOLOv7Tiny(nn.Module):
    """WongKinYiu yolov7-tiny (LeakyReLU 0.1): ELAN-tiny backbone, SPPCSP-tiny, PAN, three
    anchor heads (3 anchors x 85), the anchor decode and qai-hub-models' postprocessing."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        mp = lambda: nn.MaxPool2d(2, 2)
        self.b14 = nn.Sequential(_lconv(3, 32, 3, 2), _lconv(32, 64, 3, 2), _ELANTiny(64, 32, 64),
                                 mp(), _ELANTiny(64, 64, 128))
        self.b21 = nn.Sequential(mp(), _ELANTiny(128, 128, 256))
        self.b28 = nn.Sequential(mp(), _ELANTiny(256, 256, 512))
        self.sp_a, self.sp_b = _lconv(512, 256), _lconv(512, 256)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.sp_c, self.sp_d = _lconv(1024, 256), _lconv(512, 256)
        self.h38, self.h40, self.e47 = _lconv(256, 128), _lconv(256, 128), _ELANTiny(256, 64, 128)
        self.h48, self.h50, self.e57 = _lconv(128, 64), _lconv(128, 64), _ELANTiny(128, 32, 64)
        self.h58, self.e65 = _lconv(64, 128, 3, 2), _ELANTiny(256, 64, 128)
        self.h66, self.e73 = _lconv(128, 256, 3, 2), _ELANTiny(512, 128, 256)
        self.outs = nn.ModuleList(nn.Sequential(_lconv(c, 2 * c, 3),
                                                nn.Conv2d(2 * c, 3 * (nc + 5), 1))
                                  for c in (64, 128, 256))
        self.nc = nc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        up = lambda t: nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")
        p14 = self.b14(x)
        p21 = self.b21(p14)
        p28 = self.b28(p21)
        a = self.sp_a(p28)
        sp = self.sp_d(torch.cat([self.sp_c(torch.cat([a] + [p(a) for p in self.pools], 1)),
                                  self.sp_b(p28)], 1))
        t47 = self.e47(torch.cat([up(self.h38(sp)), self.h40(p21)], 1))
        t57 = self.e57(torch.cat([up(self.h48(t47)), self.h50(p14)], 1))
        t65 = self.e65(torch.cat([self.h58(t57), t47], 1))
        t73 = self.e73(torch.cat([self.h66(t65), sp], 1))
        outs = []
        for m, f in zip(self.outs, (t57, t65, t73), strict=True):
            y = m(f)
            b, _, h, w = y.shape
            outs.append(y.view(b, 3, self.nc + 5, h * w).permute(0, 1, 3, 2).reshape(b, -1,
                                                                                  self.nc + 5))
        y = torch.cat(outs, 1).sigmoid()
        grid = torch.zeros(1, y.shape[1], 2, device=y.device)
        reg = torch.cat([(y[..., :2] * 2 - 0.5 + grid) * 8.0, (y[..., 2:4] * 2) ** 2 * 10.0], -1)
        return _det_post(reg, y[..., 4:5], y[..., 5:])


class _HRModule(nn.Module):
    """One HRNet exchange unit: 4 basic blocks per branch, then every output branch sums every
    input branch (1x1 + nearest upsampling from lower resolutions, strided 3x3 chains from
    higher)."""

    def __init__(self, chans: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        basic = lambda c: nn.Sequential(_Residual(nn.Sequential(
            _bc(c, c, 3, p=1), _bc(c, c, 3, p=1, act=None)), True), nn.ReLU())
        self.branches = nn.ModuleList(nn.Sequential(*[basic(c) for _ in range(4)]) for c in chans)
        self.fuse = nn.ModuleList()
        for i in range(outputs):
            row = nn.ModuleList()
            for j, cj in enumerate(chans):
                if j > i:
                    row.append(nn.Sequential(_bc(cj, chans[i], 1, act=None),
                                             nn.Upsample(scale_factor=2.0 ** (j - i))))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [_bc(cj, cj, 3, 2, 1) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, _bc(cj, chans[i], 3, 2, 1, act=None)))
            self.fuse.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs, strict=True)]
        out = []
        for row in self.fuse:
            y = row[0](xs[0])
            for f, x in zip(row[1:], xs[1:], strict=True):
                y = y + f(x)
            out.append(torch.relu(y))
        return out


class _HRNetPose(nn.Module):
    """leoxiaobin HRNet-W32 pose (256x192): stem, 4 bottlenecks, stages of 1 / 4 / 3 modules on
    2 / 3 / 4 branches (32 / 64 / 128 / 256 channels), the 17-heatmap 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_bc(3, 64, 3, 2, 1), _bc(64, 64, 3, 2, 1))
        self.layer1 = nn.Sequential(_Bottleneck(64, 64, 1, 1, 64, False),
                                    *[_Bottleneck(256, 64, 1, 1, 64, False) for _ in range(3)])
        c = (32, 64, 128, 256)
        self.t1 = nn.ModuleList([_bc(256, 32, 3, p=1), _bc(256, 64, 3, 2, 1)])
        self.s2 = nn.ModuleList([_HRModule(c[:2], 2)])
        self.t2 = _bc(64, 128, 3, 2, 1)
        self.s3 = nn.ModuleList(_HRModule(c[:3], 3) for _ in range(4))
        self.t3 = _bc(128, 256, 3, 2, 1)
        self.s4 = nn.ModuleList(_HRModule(c, 4 if i < 2 else 1) for i in range(3))
        self.head = nn.Conv2d(32, 17, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer1(self.stem(x))
        xs = [t(y) for t in self.t1]
        for m in self.s2:
            xs = m(xs)
        xs = [*xs, self.t2(xs[-1])]
        for m in self.s3:
            xs = m(xs)
        xs = [*xs, self.t3(xs[-1])]
        for m in self.s4:
            xs = m(xs)
        return self.head(xs[0])


# ---------------------------------------------------------------- mobilegen's SD components


def _sd(component: str) -> Built:
    from mobilegen.models import clip_text, unet, vae_decoder

    with META:
        if component == "unet":
            m: nn.Module = unet.EfficientUNet(unet.VARIANTS["sd15"]).eval()
            return m, (torch.empty(1, 4, 64, 64, device=META), torch.empty(1, device=META),
                       torch.empty(1, 77, 768, device=META))
        if component == "vae":
            m = vae_decoder.VAEDecoder(vae_decoder.VARIANTS["sd-vae"]).eval()
            return m, (torch.empty(1, 4, 64, 64, device=META),)
        m = clip_text.CLIPTextEncoder(clip_text.VARIANTS["clip-vit-l14"]).eval()
    return m, (torch.zeros(1, 77, dtype=torch.long, device=META),)



# ---------------------------------------------------------------- transformers configurations


def _vision(cls_name: str, cfg_name: str, size: int, **cfg: Any) -> Callable[[], Built]:
    if cls_name.endswith("ForImageClassification"):
        cfg.setdefault("num_labels", 1000)  # qai's ImageNet heads (transformers' default is 2)
    return lambda: (_hf(cls_name, cfg_name, **cfg), _img(size))


def _masked_lm(cls_name: str, cfg_name: str, n: int, **cfg: Any) -> Callable[[], Built]:
    """qai-hub-models' BaseBertModel: the masked-LM logits, the row at the [MASK] index, its
    argmax (one token id out, not the 384 x vocab logits)."""
    class _MLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = _hf(cls_name, cfg_name, **cfg)

        def forward(self, input_ids: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
            logits = self.m(input_ids=input_ids).logits
            return logits[torch.arange(input_ids.shape[0], device=logits.device),
                          mask_indices].argmax(-1)

    def build() -> Built:
        m = _MLM().eval()
        return m, {**_ids(n), "mask_indices": torch.zeros(1, dtype=torch.long, device=META)}
    return build


def _text(cls_name: str, cfg_name: str, n: int, **cfg: Any) -> Callable[[], Built]:
    return lambda: (_hf(cls_name, cfg_name, **cfg), _ids(n))


def _whisper(d: int, layers: int, heads: int, mels: int = 80) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        cfg = transformers.WhisperConfig(d_model=d, encoder_layers=layers, decoder_layers=2,
                                         encoder_attention_heads=heads,
                                         decoder_attention_heads=heads, encoder_ffn_dim=4 * d,
                                         decoder_ffn_dim=4 * d, num_mel_bins=mels)
        with META:
            m = transformers.WhisperModel(cfg).get_encoder().eval()
        return m, (torch.empty(1, mels, 3000, device=META),)
    return build


def _clip() -> Built:
    import transformers

    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                     "num_hidden_layers": 12},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                       "num_hidden_layers": 12, "patch_size": 16, "image_size": 224},
        projection_dim=512)
    with META:
        m = transformers.CLIPModel(cfg).eval()
    # qai-hub-models scores 5 captions per image (cococaptions.CAPTIONS_PER_IMAGE)
    return m, {"input_ids": torch.zeros(5, 77, dtype=torch.long, device=META),
               "pixel_values": torch.empty(1, 3, 224, 224, device=META)}


def _siglip(part: str) -> Built:
    import transformers

    text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
            "num_hidden_layers": 12, "max_position_embeddings": 64}
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
              "num_hidden_layers": 12, "patch_size": 16, "image_size": 224}
    if part == "text":
        cfg = transformers.SiglipTextConfig(**text)
        with META:
            m = transformers.SiglipTextModel(cfg).eval()
        return m, _ids(64)
    cfg = transformers.SiglipVisionConfig(**vision)
    with META:
        m = transformers.SiglipVisionModel(cfg).eval()
    return m, _img(224)


def _depth_anything() -> Built:
    import transformers

    backbone = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12,
                                         num_attention_heads=6, image_size=518, patch_size=14,
                                         out_indices=[9, 10, 11, 12], reshape_hidden_states=False)
    cfg = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                           neck_hidden_sizes=[48, 96, 192, 384],
                                           fusion_hidden_size=64)
    with META:
        m = transformers.DepthAnythingForDepthEstimation(cfg).eval()
    return m, _img(518)


_SWIN = {"tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
         "base": (128, (2, 2, 18, 2), (4, 8, 16, 32))}


def _swin(size: str, v2: bool = False) -> Callable[[], Built]:
    e, depths, heads = _SWIN[size]
    if v2:
        return _vision("Swinv2ForImageClassification", "Swinv2Config", 256, image_size=256,
                       embed_dim=e, depths=list(depths), num_heads=list(heads), window_size=8)
    return _vision("SwinForImageClassification", "SwinConfig", 224, embed_dim=e,
                   depths=list(depths), num_heads=list(heads), window_size=7)


def _tv(fn: Callable[[], nn.Module], size: int = 224,
        shape: tuple[int, ...] | None = None) -> Callable[[], Built]:
    def build() -> Built:
        with META:
            x = (torch.empty(*shape, device=META),) if shape else _img(size)
            return fn().eval(), x
    return build


class _Softmax(nn.Module):
    """The class softmax qai-hub-models' forward applies to an HF classifier's logits."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.m(x).logits, 1)


def _video_mae() -> Built:
    """MCG-NJU VideoMAE-B/16 on Kinetics-400 (16 frames), with qai's class softmax."""
    import transformers

    with META:
        m = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(num_labels=400)).eval()
    return _Softmax(m), (torch.empty(1, 16, 3, 224, 224, device=META),)


def _yamnet() -> Built:
    import transformers

    cfg = transformers.MobileNetV1Config(num_channels=1, image_size=96, tf_padding=False,
                                         num_labels=521)
    with META:
        m = transformers.MobileNetV1ForImageClassification(cfg).eval()
    return m, (torch.empty(1, 1, 96, 64, device=META),)


def _clip_text_b32() -> Built:
    """YOLO-World's text encoder: CLIP ViT-B/32's text transformer and projection on 80 class
    prompts of 77 tokens (qai-hub-models' input spec), the embeddings L2-normalised."""
    import transformers

    cfg = transformers.CLIPTextConfig(hidden_size=512, intermediate_size=2048,
                                      num_attention_heads=8, num_hidden_layers=12,
                                      projection_dim=512)

    class _Enc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformers.CLIPTextModelWithProjection(cfg)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            e = self.m(input_ids=input_ids).text_embeds
            return nn.functional.normalize(e, dim=-1).unsqueeze(0)

    with META:
        m = _Enc().eval()
    return m, (torch.zeros(80, 77, dtype=torch.long, device=META),)


def _wav2vec2_conformer() -> Built:
    """facebook/wav2vec2-conformer-rel-pos-large-960h-ft's configuration (written out), the CTC
    model on 10 s of 16 kHz audio (qai-hub-models' input spec)."""
    import transformers

    cfg = transformers.Wav2Vec2ConformerConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        position_embeddings_type="relative", feat_extract_norm="layer", conv_bias=True,
        do_stable_layer_norm=True, conv_depthwise_kernel_size=31, vocab_size=32)
    with META:
        m = transformers.Wav2Vec2ConformerForCTC(cfg).eval()
    return m, (torch.empty(1, 160000, device=META),)


_EFF_B0 = {"width_coefficient": 1.0, "depth_coefficient": 1.0, "image_size": 224,
           "hidden_dim": 1280}
_EFF_B4 = {"width_coefficient": 1.4, "depth_coefficient": 1.8, "image_size": 380,
           "hidden_dim": 1792}


def entries() -> list[ZooEntry]:
    """Every buildable (model id, component); the SD / controlnet ones are held out."""
    tv, hf = "hand definition (torchvision layout)", "transformers config"
    e = [
        ZooEntry("resnet18", "ResNet18", "resnet", _tv(lambda: resnet((2, 2, 2, 2), True)), tv),
        ZooEntry("resnet50", "ResNet50", "resnet", _tv(lambda: resnet((3, 4, 6, 3))), tv),
        ZooEntry("resnet101", "ResNet101", "resnet", _tv(lambda: resnet((3, 4, 23, 3))), tv),
        ZooEntry("wideresnet50", "WideResNet50", "resnet",
                 _tv(lambda: resnet((3, 4, 6, 3), width=128)), tv),
        ZooEntry("resnext50", "ResNeXt50", "resnext",
                 _tv(lambda: resnet((3, 4, 6, 3), groups=32, width=4)), tv),
        ZooEntry("resnext101", "ResNeXt101", "resnext",
                 _tv(lambda: resnet((3, 4, 23, 3), groups=32, width=8)), tv),
        ZooEntry("squeezenet1_1", "SqueezeNet-1.1", "squeezenet", _tv(squeezenet1_1), tv),
        ZooEntry("mobilenet_v3_large", "MobileNet-v3-Large", "mobilenet_v3",
                 _tv(lambda: mobilenet_v3("large")), tv),
        ZooEntry("mobilenet_v3_small", "MobileNet-v3-Small", "mobilenet_v3",
                 _tv(lambda: mobilenet_v3("small")), tv),
        ZooEntry("densenet121", "DenseNet-121", "densenet", _tv(densenet121), tv),
        ZooEntry("mobilenet_v2", "MobileNet-v2", "mobilenet_v2",
                 _vision("MobileNetV2ForImageClassification", "MobileNetV2Config", 224,
                         tf_padding=False), hf),
        ZooEntry("efficientnet_b0", "EfficientNet-B0", "efficientnet",
                 _vision("EfficientNetForImageClassification", "EfficientNetConfig", 224,
                         **_EFF_B0), hf),
        ZooEntry("efficientnet_b4", "EfficientNet-B4", "efficientnet",
                 _vision("EfficientNetForImageClassification", "EfficientNetConfig", 380,
                         **_EFF_B4), hf),
        ZooEntry("regnet", "RegNet", "regnet",
                 _vision("RegNetForImageClassification", "RegNetConfig", 224, layer_type="x",
                         depths=[2, 6, 15, 2], hidden_sizes=[96, 192, 432, 1008],
                         groups_width=48), hf),
        ZooEntry("regnet_y_800mf", "RegNet-Y-800MF", "regnet",
                 _vision("RegNetForImageClassification", "RegNetConfig", 224, layer_type="y",
                         depths=[1, 3, 8, 2], hidden_sizes=[64, 144, 320, 784],
                         groups_width=16), hf),
        ZooEntry("convnext_tiny", "ConvNext-Tiny", "convnext",
                 _vision("ConvNextForImageClassification", "ConvNextConfig", 224), hf),
        ZooEntry("convnext_base", "ConvNext-Base", "convnext",
                 _vision("ConvNextForImageClassification", "ConvNextConfig", 224,
                         depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024]), hf),
        ZooEntry("convnext_v2_base", "ConvNextV2-Base", "convnext",
                 _vision("ConvNextV2ForImageClassification", "ConvNextV2Config", 224,
                         depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024]), hf),
        ZooEntry("vit", "VIT", "vit", _vision("ViTForImageClassification", "ViTConfig", 224), hf),
        ZooEntry("beit", "Beit", "vit", _vision("BeitForImageClassification", "BeitConfig", 224,
                                                use_relative_position_bias=True), hf),
        ZooEntry("swin_tiny", "Swin-Tiny", "swin", _swin("tiny"), hf),
        ZooEntry("swin_small", "Swin-Small", "swin", _swin("small"), hf),
        ZooEntry("swin_base", "Swin-Base", "swin", _swin("base"), hf),
        ZooEntry("swinv2_base", "SwinV2-Base", "swin", _swin("base", v2=True), hf),
        ZooEntry("levit", "LeViT", "levit",
                 _vision("LevitForImageClassification", "LevitConfig", 224), hf),
        ZooEntry("mobile_vit", "Mobile-VIT", "mobilevit",
                 _vision("MobileViTForImageClassification", "MobileViTConfig", 224,
                         image_size=224), hf),
        ZooEntry("segformer_base", "Segformer-Base", "segformer",
                 _vision("SegformerForSemanticSegmentation", "SegformerConfig", 512,
                         num_labels=150), hf),
        ZooEntry("depth_anything", "Depth-Anything", "depth_anything", _depth_anything, hf),
        ZooEntry("depth_anything_v2", "Depth-Anything-V2", "depth_anything", _depth_anything, hf),
        ZooEntry("bert_base_uncased_hf", "Bert-Base-Uncased-Hf", "bert",
                 _masked_lm("BertForMaskedLM", "BertConfig", 384), hf),
        ZooEntry("distil_bert_base_uncased_hf", "Distil-Bert-Base-Uncased-Hf", "bert",
                 _masked_lm("DistilBertForMaskedLM", "DistilBertConfig", 384), hf),
        ZooEntry("electra_bert_base_discrim_google", "Electra-Bert-Base-Discrim-Google", "bert",
                 _text("ElectraForPreTraining", "ElectraConfig", 384, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       embedding_size=768), hf),
        ZooEntry("albert_base_v2_hf", "Albert-Base-V2-Hf", "albert",
                 _masked_lm("AlbertForMaskedLM", "AlbertConfig", 384, hidden_size=768,
                           num_attention_heads=12, intermediate_size=3072), hf),
        ZooEntry("mobile_bert_uncased_google", "Mobile-Bert-Uncased-Google", "mobilebert",
                 _text("MobileBertForMaskedLM", "MobileBertConfig", 384), hf),
        ZooEntry("minilm_v2", "MiniLM-v2", "bert",
                 _text("BertModel", "BertConfig", 128, hidden_size=384, num_hidden_layers=6,
                       num_attention_heads=12, intermediate_size=1536), hf),
        ZooEntry("openai_clip", "OpenAI-Clip", "clip", _clip, hf),
        ZooEntry("siglip2", "image_encoder", "siglip", lambda: _siglip("image"), hf),
        ZooEntry("siglip2", "text_encoder", "siglip", lambda: _siglip("text"), hf),
        ZooEntry("distil_whisper", "encoder", "whisper", _whisper(768, 12, 12), hf),
        ZooEntry("whisper_small_quantized", "encoder", "whisper", _whisper(768, 12, 12), hf),
        ZooEntry("whisper_medium_quantized", "encoder", "whisper", _whisper(1024, 24, 16), hf),
        ZooEntry("whisper_large_v3_turbo_quantized", "encoder", "whisper",
                 _whisper(1280, 32, 20, mels=128), hf),
        ZooEntry("googlenet", "GoogLeNet", "googlenet", _tv(googlenet), tv),
        ZooEntry("shufflenet_v2", "Shufflenet-v2", "shufflenet", _tv(shufflenet_v2_x0_5), tv),
        ZooEntry("mnasnet05", "MNASNet05", "mnasnet", _tv(mnasnet0_5), tv),
        ZooEntry("efficientnet_v2_s", "EfficientNet-V2-s", "efficientnet_v2",
                 _tv(efficientnet_v2_s, 384), tv),
        ZooEntry("resnet_3d", "ResNet-3D", "video_resnet",
                 _tv(lambda: video_resnet("r3d"), shape=(1, 3, 16, 112, 112)), tv),
        ZooEntry("resnet_mixed", "ResNet-Mixed-Convolution", "video_resnet",
                 _tv(lambda: video_resnet("mc3"), shape=(1, 3, 16, 112, 112)), tv),
        ZooEntry("resnet_2plus1d", "ResNet-2Plus1D", "video_resnet",
                 _tv(lambda: video_resnet("r2plus1d"), shape=(1, 3, 16, 112, 112)), tv),
        ZooEntry("unet_segmentation", "Unet-Segmentation", "unet_segmentation",
                 _tv(_UNetSeg, shape=(1, 3, 640, 1280)), "hand definition (milesial UNet)"),
        ZooEntry("esrgan", "ESRGAN", "rrdb", _tv(_RRDBNet, 128), "hand definition (RRDBNet)"),
        ZooEntry("real_esrgan_x4plus", "Real-ESRGAN-x4plus", "rrdb", _tv(_RRDBNet, 128),
                 "hand definition (RRDBNet)"),
        ZooEntry("real_esrgan_general_x4v3", "Real-ESRGAN-General-x4v3", "plain_sr",
                 _tv(lambda: _PlainSR(64, 32, True), 128), "hand definition (SRVGGNetCompact)"),
        ZooEntry("quicksrnetsmall", "QuickSRNetSmall", "plain_sr",
                 _tv(lambda: _PlainSR(32, 2, False), 128), "hand definition (QuickSRNet)"),
        ZooEntry("quicksrnetmedium", "QuickSRNetMedium", "plain_sr",
                 _tv(lambda: _PlainSR(32, 5, False), 128), "hand definition (QuickSRNet)"),
        ZooEntry("quicksrnetlarge", "QuickSRNetLarge", "plain_sr",
                 _tv(lambda: _PlainSR(64, 11, False), 128), "hand definition (QuickSRNet)"),
        ZooEntry("fcn_resnet50", "FCN-ResNet50", "resnet", _tv(_FCN, 520), tv),
        ZooEntry("dncnn", "DnCNN", "dncnn", _tv(_DnCNN, shape=(1, 1, 256, 256)),
                 "hand definition (DnCNN)"),
        ZooEntry("efficientnet_lite4", "EfficientNet-Lite4", "efficientnet",
                 _tv(efficientnet_lite4, 300), "hand definition (TF EfficientNet-Lite)"),
        ZooEntry("video_mae", "Video-MAE", "vit", _video_mae, hf),
        ZooEntry("yamnet", "YamNet", "mobilenet_v1", _yamnet, hf),
    ]
    # added for the quantized slices (issue 23): architectures with fully-NPU w8a8 / w8a16
    # rows on the S24 / S25 that build offline
    yl = "hand definition (ultralytics YOLOv8 layout)"
    e += [
        ZooEntry("inception_v3", "Inception-v3", "inception", _tv(inception_v3), tv),
        ZooEntry("srgan", "SRGAN", "srresnet", _tv(_SRResNet, 128),
                 "hand definition (SRGAN-PyTorch SRResNet)"),
        ZooEntry("posenet_mobilenet", "Posenet-Mobilenet", "mobilenet_v1",
                 _tv(_PoseNet, shape=(1, 3, 513, 257)), "hand definition (posenet-pytorch)"),
        ZooEntry("deeplabv3_plus_mobilenet", "DeepLabV3-Plus-MobileNet", "mobilenet_v2",
                 _tv(_DeepLabV3PlusMNV2, 513), "hand definition (pytorch-deeplab-xception)"),
        ZooEntry("pspnet", "PSPNet", "resnet", _tv(_PSPNet, 473), "hand definition (semseg)"),
        ZooEntry("mobile_facenet", "MobileFaceNet", "mobilefacenet",
                 lambda: (_MobileFaceNet().to(META).eval(), _img(112) + _img(112)),
                 "hand definition (foamliu MobileFaceNet)"),
        ZooEntry("nafnet_deblur", "NAFNet-DeBlur", "nafnet",
                 _tv(lambda: _NAFNet((1, 1, 1, 28), 1, (1, 1, 1, 1)), shape=(1, 3, 360, 640)),
                 "hand definition (NAFNet)"),
        ZooEntry("nafnet_denoise", "NAFNet-DeNoise", "nafnet",
                 _tv(lambda: _NAFNet((2, 2, 4, 8), 12, (2, 2, 2, 2)), 256),
                 "hand definition (NAFNet)"),
        ZooEntry("deepbox", "vgg_3d_detection", "vgg", _tv(_VGG3D),
                 "hand definition (torchvision vgg19_bn + deepbox heads)"),
        ZooEntry("yolov8_det", "YOLOv8-Detection", "yolo_ultralytics",
                 _tv(lambda: _YOLOv8("n"), 640), yl),
        ZooEntry("yolov8_seg", "YOLOv8-Segmentation", "yolo_ultralytics",
                 _tv(lambda: _YOLOv8("n", "segment"), 640), yl),
        ZooEntry("yolov8_obb", "YOLOv8-OBB", "yolo_ultralytics",
                 _tv(lambda: _YOLOv8("n", "obb", 15), 640), yl),
        ZooEntry("fastsam_s", "FastSam-S", "yolo_ultralytics",
                 _tv(lambda: _YOLOv8("s", "segment", 1), 640), yl),
        ZooEntry("fastsam_x", "FastSam-X", "yolo_ultralytics",
                 _tv(lambda: _YOLOv8("x", "segment", 1), 640), yl),
        ZooEntry("yolov11_det", "YOLOv11-Detection", "yolo_ultralytics",
                 _tv(lambda: _YOLO11(), 640), "hand definition (ultralytics YOLO11 layout)"),
        ZooEntry("yolov11_seg", "YOLOv11-Segmentation", "yolo_ultralytics",
                 _tv(lambda: _YOLO11("segment"), 640),
                 "hand definition (ultralytics YOLO11 layout)"),
        ZooEntry("yolov11_pose", "YOLOv11-Pose", "yolo_ultralytics",
                 _tv(lambda: _YOLO11("pose", 1), 640),
                 "hand definition (ultralytics YOLO11 layout)"),
        ZooEntry("inception_v4", "Inception-v4", "inception", _tv(inception_v4, 299),
                 "hand definition (timm inception_v4 layout)"),
        ZooEntry("yolox", "Yolo-X", "yolox", _tv(_YOLOX, 640), "hand definition (YOLOX-S)"),
        ZooEntry("yolov7", "Yolo-v7", "yolov7", _tv(_YOLOv7Tiny, 640),
                 "hand definition (yolov7-tiny.yaml)"),
        ZooEntry("hrnet_pose", "HRNetPose", "hrnet", _tv(_HRNetPose, shape=(1, 3, 256, 192)),
                 "hand definition (HRNet-W32 pose)"),
        ZooEntry("yolo_world", "text_encoder", "clip", _clip_text_b32, hf),
        ZooEntry("wav2vec2_conformer", "Wav2Vec2-Conformer-Large-960h", "wav2vec2",
                 _wav2vec2_conformer, hf),
    ]
    sd = "mobilegen.models (SD-1.5 variants)"
    for mid in ("stable_diffusion_v1_5", "controlnet_canny"):
        for comp in ("text_encoder", "unet", "vae"):
            e.append(ZooEntry(mid, comp, "stable_diffusion", lambda c=comp: _sd(c), sd,
                              held_out=True))
    return e
