"""Small PyTorch reference modules with the official ReSeND state_dict key names.

They transcribe torchvision's ResNet-18 (wrapped as the reference's ``ResNetFc``, which
registers every backbone module twice) and the reference ``RelationalTransformer`` (timm ViT
blocks). Parity tests and ``scripts/bench.py`` use them; torchvision itself is not needed.
"""

import math

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18 layout; ``stem='cifar'`` uses a 3x3/1 conv and no max pool."""

    def __init__(self, stem: str = "imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, inplanes = (64, 128, 256, 512), 64
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1))
            setattr(self, f"layer{i}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, 1000)

    def features(self, x, return_map: bool = False):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = torch.flatten(self.avgpool(x), 1)
        return (pooled, x) if return_map else pooled


class ResNetFc(nn.Module):
    """The reference feature extractor: ``model_resnet`` plus aliases of each of its modules."""

    def __init__(self, stem: str = "imagenet"):
        super().__init__()
        self.model_resnet = ResNet18(stem)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(self.model_resnet, name))

    def forward(self, x):
        return self.model_resnet.features(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RelationalTransformer(nn.Module):
    """Reference relational module: input is ``cat(feature_a, feature_b)`` -> (N, 1) logits."""

    def __init__(self, input_dim: int = 512, embed_dim: int = 768, depth: int = 4, num_heads: int = 12):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.proj = nn.Linear(input_dim, embed_dim)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, 1)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x1, x2 = torch.chunk(x, 2, dim=1)
        x1, x2 = self.proj(x1.unsqueeze(1)), self.proj(x2.unsqueeze(1))
        x = torch.cat((self.cls_token.expand(x1.shape[0], -1, -1), x1, x2), dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def randomise_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
    """Gives every BN layer non-trivial affine parameters and running statistics."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(math.e ** (0.3 * torch.randn(c, generator=generator)))


def reference_normality(relational: RelationalTransformer, test_features, prototypes):
    """The reference eval: for each test feature, softmax over classes of ``-logit(test, proto)``."""
    scores, predictions = [], []
    with torch.no_grad():
        for feature in test_features:
            pairs = torch.cat((feature.expand(len(prototypes), -1), prototypes), 1)
            probabilities = torch.softmax(-relational(pairs)[:, 0], dim=0)
            scores.append(probabilities.max())
            predictions.append(probabilities.argmax())
    return torch.stack(scores), torch.stack(predictions)
