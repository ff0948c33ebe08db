"""A native PyTorch DPN-92 U-Net: the network of the official HPA cell-segmentation models.

Written from the data-only specification (``shared/hpa_seg_spec/ARCHITECTURE.md``), not from the
original code. Its ``state_dict`` matches the official whole-model pickles entry for entry (names,
shapes, dtypes and order: decoder first, then encoder), so their weights load with ``strict=True``.

    model = DPNUNet().eval()
    logits = model(x)          # x: (B, 3, H, W) normalised, H and W multiples of 32 -> (B, 3, H, W)

``forward`` returns **logits** (no activation); softmax over channels gives the probabilities of
0 = background, 1 = border (between touching objects), 2 = interior.
"""
from __future__ import annotations

import torch
from torch import nn

ENCODER_BN_EPS = 1e-3             # every encoder BatchNorm (1e-5 moves logits by up to 3.6e-3)
FILTERS = (64, 336, 704, 1552, 2688)  # encoder widths at 1/2 .. 1/32 (skip 0..3, bottom)
GROUPS = 32                       # grouped 3x3 convolution of every dual-path block
# per stage: (residual width bw, dense increment inc, blocks, stride of the first block)
STAGES = ((256, 16, 3, 1), (512, 32, 4, 2), (1024, 24, 20, 2), (2048, 128, 3, 2))
NUM_STATE_ENTRIES = 595           # 307 parameters + 288 buffers (96 BatchNorms x 3)
NUM_PARAMETERS = 139_108_867
OUT_CHANNELS = 3                  # background, border, interior
IN_CHANNELS = 3
DPN_MEAN = (124.0, 117.0, 104.0)  # input normalisation on the 0..255 scale: (255 x - mean) * DPN_SCALE
DPN_SCALE = 0.0167


class BnActConv2d(nn.Module):
    """Pre-activation unit: BN(eps 1e-3) -> ReLU -> conv without bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch, eps=ENCODER_BN_EPS)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.bn(x)))


class CatBnAct(nn.Module):
    """Concatenate a (residual, dense) pair on channels, then BN -> ReLU."""

    def __init__(self, ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, eps=ENCODER_BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, tuple):
            x = torch.cat(x, dim=1)
        return self.act(self.bn(x))


class DualPathBlock(nn.Module):
    """One DPN block: input a tensor or a pair (R, D); output the pair (R + out1, cat[D, out2])."""

    def __init__(self, in_ch: int, r: int, bw: int, inc: int, proj_stride: int | None = None):
        super().__init__()
        self.num_1x1_c, self.inc = bw, inc
        self.has_proj = proj_stride is not None
        self.key_stride = proj_stride or 1
        if self.has_proj:  # registered first: the state_dict lists the projection before c1x1_a
            proj = BnActConv2d(in_ch, bw + 2 * inc, 1, stride=self.key_stride)
            setattr(self, f"c1x1_w_s{self.key_stride}", proj)
        self.c1x1_a = BnActConv2d(in_ch, r, 1)
        self.c3x3_b = BnActConv2d(r, r, 3, stride=self.key_stride, padding=1, groups=GROUPS)
        self.c1x1_c = BnActConv2d(r, bw + inc, 1)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        bw = self.num_1x1_c
        if self.has_proj:
            base = getattr(self, f"c1x1_w_s{self.key_stride}")(x_in)
            r0, d0 = base[:, :bw], base[:, bw:]
        else:
            r0, d0 = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return r0 + out[:, :bw], torch.cat([d0, out[:, bw:]], dim=1)


class UnetDecoderBlock(nn.Module):
    """x2 nearest upsampling -> 3x3 conv with bias -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                   nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class ConvBottleneck(nn.Module):
    """Fusion of a decoder map with its skip: 3x3 conv 2f -> f with bias -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self.seq(torch.cat([dec, enc], dim=1))


def _encoder_stages() -> nn.ModuleList:
    stem = nn.Sequential(nn.Conv2d(IN_CHANNELS, FILTERS[0], 7, stride=2, padding=3, bias=False),
                         nn.BatchNorm2d(FILTERS[0], eps=ENCODER_BN_EPS), nn.ReLU(inplace=True))
    stages = [stem]
    in_ch = FILTERS[0]
    for i, (bw, inc, n, stride) in enumerate(STAGES):
        r = 96 * bw // 256
        blocks: list[nn.Module] = [nn.MaxPool2d(3, stride=2, padding=1)] if i == 0 else []
        blocks.append(DualPathBlock(in_ch, r, bw, inc, proj_stride=stride))
        in_ch = bw + 3 * inc
        for _ in range(n - 1):
            blocks.append(DualPathBlock(in_ch, r, bw, inc))
            in_ch += inc
        if i == len(STAGES) - 1:
            blocks.append(CatBnAct(in_ch))
        stages.append(nn.Sequential(*blocks))
    assert in_ch == FILTERS[-1]
    return nn.ModuleList(stages)


class DPNUNet(nn.Module):
    """U-Net with a DPN-92 encoder; 3 input channels, 3 output logits at the input resolution."""

    def __init__(self):
        super().__init__()
        f = FILTERS
        # insertion order = state_dict order of the official files: decoder first, encoder last
        self.bottlenecks = nn.ModuleList([ConvBottleneck(2 * f[3 - i], f[3 - i]) for i in range(4)])
        self.decoder_stages = nn.ModuleList([UnetDecoderBlock(f[k + 1], f[k]) for k in range(4)])
        self.last_upsample = UnetDecoderBlock(f[0], f[0])
        self.final = nn.Sequential(nn.Conv2d(f[0], OUT_CHANNELS, 3, padding=1))
        self.encoder_stages = _encoder_stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) normalised input, H and W multiples of 32. Returns logits (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
            raise ValueError(f"DPNUNet expects (B, {IN_CHANNELS}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"DPNUNet needs H and W multiples of 32 (five stride-2 reductions), "
                             f"got {h}x{w}; pad the input first (HPASegmenter does)")
        skips = []
        for stage in self.encoder_stages:
            for m in stage:
                x = m(x)
            if isinstance(x, tuple):
                x = torch.cat(x, dim=1)
            skips.append(x)
        x = skips.pop()  # bottom: 2688 channels at H/32
        for i, k in enumerate(range(3, -1, -1)):
            x = self.bottlenecks[i](self.decoder_stages[k](x), skips[k])
        return self.final(self.last_upsample(x))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> the network input: ``(255 x - (124, 117, 104)) * 0.0167``."""
    mean = torch.tensor(DPN_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * 255.0 - mean) * DPN_SCALE
