"""Teachers and students of both worlds, and the frozen, subtask-restricted teacher.

Mini world (``book/mini_world.md``, "Models"): ResNets built from torchvision's
``BasicBlock`` (so zennit's ``ResNetCanonizer`` applies), one input channel, a
3×3 stride-1 stem and four stages with strides 1/2/2/2: the teacher with widths
32/64/128/256; the default student ``mini-student`` with 8/16/32/64, so that the
distilled subspace has K/d = 0.25 at every layer (the paper's ResNet-101 →
MobileNetV4-small pair has K/d between 0.25 and 0.06); ``mini-student-wide``
(16/32/64/128, K/d = 0.5) is the first version's student, kept for the K/d
ablation. The number of blocks per stage is :data:`MINI_BLOCKS`.

Paper world (``book/protocol.md`` §2, D11): torchvision ``resnet101`` /
``resnet18`` teachers with ImageNet weights loaded from the local torch cache
or a given file (never downloaded here), the timm ``mobilenetv4_conv_small``
student and ``resnet18-s``, a narrow ResNet-18 from torchvision blocks.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from .errors import ReproError

MINI_BLOCKS = (1, 1, 1, 1)
MINI_TEACHER_WIDTHS = (32, 64, 128, 256)
MINI_STUDENT_WIDTHS = (8, 16, 32, 64)          # K/d = 0.25 against the teacher
MINI_STUDENT_WIDE_WIDTHS = (16, 32, 64, 128)    # K/d = 0.5 (the K/d ablation)
EVAL_BATCH = 500    # images per forward pass wherever a model is only evaluated
RESNET18S_WIDTHS = (32, 64, 128, 256)

STUDENTS = ("mini-student", "mini-student-wide", "mobilenetv4_conv_small", "resnet18-s")


class BlockResNet(nn.Module):
    """A ResNet of torchvision ``BasicBlock`` stages with free widths.

    The attribute names (``conv1``, ``bn1``, ``relu``, ``maxpool``,
    ``layer1``..``layer4``, ``avgpool``, ``fc``) and the registration order match
    torchvision's ``ResNet``, which is what zennit's canonizers expect.
    ``stem="small"`` is a 3×3 stride-1 convolution (32×32 inputs);
    ``stem="imagenet"`` is torchvision's 7×7 stride-2 convolution and max-pool.
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int] = (2, 2, 2, 2),
                 in_channels: int = 3, num_classes: int = 1000, stem: str = "imagenet"):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ReproError("BlockResNet needs four stage widths and four block counts")
        self.widths = tuple(widths)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        elif stem == "small":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        else:
            raise ReproError(f"unknown stem {stem!r}; choose 'imagenet' or 'small'")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        inplanes = widths[0]
        for i, (w, n, s) in enumerate(zip(widths, blocks, (1, 2, 2, 2)), start=1):
            layers = []
            for j in range(n):
                stride = s if j == 0 else 1
                down = None
                if stride != 1 or inplanes != w:
                    down = nn.Sequential(conv1x1(inplanes, w, stride), nn.BatchNorm2d(w))
                layers.append(BasicBlock(inplanes, w, stride, down))
                inplanes = w
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mini_teacher(num_classes: int = 10) -> BlockResNet:
    return BlockResNet(MINI_TEACHER_WIDTHS, MINI_BLOCKS, in_channels=1,
                       num_classes=num_classes, stem="small")


def mini_student(num_classes: int = 5, widths: Sequence[int] = MINI_STUDENT_WIDTHS) -> BlockResNet:
    return BlockResNet(widths, MINI_BLOCKS, in_channels=1, num_classes=num_classes, stem="small")


def build_student(name: str, num_classes: int) -> nn.Module:
    """A randomly initialised student (the caller seeds torch first)."""
    if name == "mini-student":
        return mini_student(num_classes)
    if name == "mini-student-wide":
        return mini_student(num_classes, MINI_STUDENT_WIDE_WIDTHS)
    if name == "resnet18-s":
        return BlockResNet(RESNET18S_WIDTHS, (2, 2, 2, 2), in_channels=3,
                           num_classes=num_classes, stem="imagenet")
    if name == "mobilenetv4_conv_small":
        try:
            import timm
        except ImportError as e:  # pragma: no cover
            raise ReproError("the mobilenetv4_conv_small student needs timm: pip install timm") from e
        return timm.create_model("mobilenetv4_conv_small", pretrained=False, num_classes=num_classes)
    raise ReproError(f"unknown student {name!r}; choose one of {list(STUDENTS)}")


def teacher_architecture(name: str) -> nn.Module:
    """A teacher's architecture without its weights (for shapes and plans: nothing is loaded)."""
    if name == "mini-teacher":
        return mini_teacher(10)
    import torchvision

    if name in ("resnet101", "resnet18"):
        return getattr(torchvision.models, name)(weights=None)
    raise ReproError(f"the architecture of teacher {name!r} is known only once it is loaded")


def load_paper_teacher(name: str, weights_file: str | os.PathLike | None = None) -> nn.Module:
    """torchvision ResNet with IMAGENET1K_V1 weights, from a file or the local torch cache.

    Nothing is downloaded: offline and missing, a :class:`ReproError` says where
    the file is expected and how to provide it.
    """
    import torchvision

    builders = {
        "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
        "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    }
    if name not in builders:
        raise ReproError(f"unknown paper teacher {name!r}; choose one of {sorted(builders)}")
    build, weights = builders[name]
    model = build(weights=None)
    filename = Path(weights.url).name
    candidates = []
    if weights_file:
        candidates.append(Path(weights_file))
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ReproError(
            f"pretrained weights for {name} not found; looked at: "
            + ", ".join(str(p) for p in candidates)
            + f". Download {weights.url} on a machine with internet and put it in "
            f"{candidates[-1].parent} (torch's cache, $TORCH_HOME), or pass --teacher-weights FILE.")
    from .io import torch_load

    state = torch_load(found, "teacher weights")   # weights_only=True; a bad file is a ReproError
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ReproError(f"{found} does not hold {name} weights: {str(e).splitlines()[0]}") from e
    return model


def num_outputs(model: nn.Module) -> int | None:
    """The width of the model's last Linear layer (its class count), if it has one."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return None if last is None else last.out_features


class FrozenTeacher(nn.Module):
    """A teacher that is frozen by construction and answers with subtask logits.

    * every parameter has ``requires_grad=False``;
    * ``train()`` is ignored: the teacher stays in eval mode (BatchNorm uses its
      running statistics) whatever a caller does;
    * ``forward`` returns the logits restricted to ``subtask_classes`` (§2.1), in
      the order given: no re-calibration, no bias change.

    Feature paths (``layer1``...) refer to the wrapped model, ``self.model``.
    """

    def __init__(self, model: nn.Module, subtask_classes: Sequence[int]):
        super().__init__()
        n = num_outputs(model)
        classes = list(subtask_classes)
        if n is not None and (max(classes) >= n or min(classes) < 0):
            raise ReproError(f"the teacher has {n} output classes, but the subtask asks for "
                             f"classes {classes}; give subtask classes in 0..{n - 1} or a teacher "
                             "trained on the foundation task")
        self.model = model
        self.register_buffer("class_index", torch.tensor(classes, dtype=torch.long), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":  # noqa: D401 - frozen on purpose
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.class_index)


@torch.no_grad()
def predict_labels(model: nn.Module, inputs: Iterable[torch.Tensor],
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """The predicted class (argmax of the logits) of ``model`` on every batch of
    ``inputs``, concatenated on the CPU: the one prediction loop of the package.

    The model runs in eval mode (its train/eval mode is restored afterwards), without
    gradient, inside ``autocast()`` (the cohort's precision); the batches are used as
    they come (split them with ``x.split(EVAL_BATCH)``, move them to the device first).
    """
    was = model.training
    model.eval()
    try:
        with autocast():
            preds = [model(x).argmax(1) for x in inputs]
    finally:
        model.train(was)
    return torch.cat(preds).cpu()
