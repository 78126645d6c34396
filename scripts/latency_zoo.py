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


def _cbr(cin: int, cout: int, k: int, s: int = 1, g: int = 1, act: type = nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False),
                         nn.BatchNorm2d(cout), act())


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, groups: int, width: int,
                 basic: bool) -> None:
        super().__init__()
        out = planes * (1 if basic else 4)
        if basic:
            self.body = nn.Sequential(_cbr(cin, planes, 3, stride), nn.Conv2d(planes, planes, 3, 1, 1,
                                      bias=False), nn.BatchNorm2d(planes))
        else:
            mid = int(planes * width / 64) * groups
            self.body = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, stride, groups),
                                      nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
        self.down = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                     if stride != 1 or cin != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def resnet(layers: tuple[int, ...], basic: bool = False, groups: int = 1,
           width: int = 64) -> nn.Module:
    """torchvision's ResNet / ResNeXt / Wide ResNet layout (stride on the 3x3)."""
    blocks: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(layers):
        planes = 64 * 2**i
        for j in range(n):
            blocks.append(_Bottleneck(cin, planes, 2 if j == 0 and i > 0 else 1, groups, width,
                                      basic))
            cin = planes * (1 if basic else 4)
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*blocks).eval()


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


def snapfusion_unet() -> Built:
    """SnapFusion's efficient UNet at SD-1.5's latent shape (not in qai-hub-models; estimated only)."""
    from mobilegen.models import unet

    with META:
        m = unet.EfficientUNet(unet.VARIANTS["snapfusion"]).eval()
    return m, (torch.empty(1, 4, 64, 64, device=META), torch.empty(1, device=META),
               torch.empty(1, 77, 768, device=META))


# ---------------------------------------------------------------- transformers configurations


def _vision(cls_name: str, cfg_name: str, size: int, **cfg: Any) -> Callable[[], Built]:
    return lambda: (_hf(cls_name, cfg_name, **cfg), _img(size))


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
    return m, {"input_ids": torch.zeros(1, 77, dtype=torch.long, device=META),
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


def _tv(fn: Callable[[], nn.Module], size: int = 224) -> Callable[[], Built]:
    def build() -> Built:
        with META:
            return fn().eval(), _img(size)
    return build


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
                 _vision("SegformerForSemanticSegmentation", "SegformerConfig", 512), hf),
        ZooEntry("depth_anything", "Depth-Anything", "depth_anything", _depth_anything, hf),
        ZooEntry("depth_anything_v2", "Depth-Anything-V2", "depth_anything", _depth_anything, hf),
        ZooEntry("bert_base_uncased_hf", "Bert-Base-Uncased-Hf", "bert",
                 _text("BertForMaskedLM", "BertConfig", 384), hf),
        ZooEntry("distil_bert_base_uncased_hf", "Distil-Bert-Base-Uncased-Hf", "bert",
                 _text("DistilBertForMaskedLM", "DistilBertConfig", 384), hf),
        ZooEntry("electra_bert_base_discrim_google", "Electra-Bert-Base-Discrim-Google", "bert",
                 _text("ElectraForPreTraining", "ElectraConfig", 384, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       embedding_size=768), hf),
        ZooEntry("albert_base_v2_hf", "Albert-Base-V2-Hf", "albert",
                 _text("AlbertForMaskedLM", "AlbertConfig", 384, hidden_size=768,
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
    ]
    sd = "mobilegen.models (SD-1.5 variants)"
    for mid in ("stable_diffusion_v1_5", "controlnet_canny"):
        for comp in ("text_encoder", "unet", "vae"):
            e.append(ZooEntry(mid, comp, "stable_diffusion", lambda c=comp: _sd(c), sd,
                              held_out=True))
    return e
