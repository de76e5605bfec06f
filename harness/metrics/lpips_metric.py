"""LPIPS: how much the edit changed inside the mask and outside it, and how diverse seeds are.

LPIPS takes inputs in [-1, 1]; the [0, 1] images of the metric contract are mapped explicitly here
(never through lpips' ``normalize`` flag, so the range conversion is visible at the call). The trunk is AlexNet
with lpips' heads, or with ``lpips.net: tiny-world`` the world CLIP's (:mod:`harness.metrics.world_lpips`); the
two record different metric versions (:func:`_version_for`), so their rows are never taken for one another.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from ..groups import SEEDS
from . import models
from ._regions import TransferView, fill_region, resize_image, sample_image, to_tensor, transfer_view
from .base import MetricSettings, MetricValue, Sample
from .options import LPIPS_OPTIONS, WORLD_LPIPS_NET
from .world_lpips import WORLD_LPIPS_VERSION

_VERSION = f"1.0+lpips-{models.LPIPS_PACKAGE_VERSION}-{models.LPIPS_NET}-v{models.LPIPS_HEADS_VERSION}"


def _version_for(options: Mapping[str, Mapping]) -> str:
    """The version rows record under the suite's metric options: the trunk is part of it."""
    return WORLD_LPIPS_VERSION if options.get("lpips", {}).get("net") == WORLD_LPIPS_NET else _VERSION


def _to_lpips_range(images: torch.Tensor) -> torch.Tensor:
    return images * 2.0 - 1.0


class LpipsMasked:
    """Mask-weighted means of LPIPS' spatial map, output vs target:
    "lpips_inside" (how much the edit changed the masked region) and "lpips_outside" (should be ~0).

    For "lpips_outside" the masked region is filled with the same grey in both images first, so an edit
    inside cannot reach the outside score through the network's receptive field: the value measures
    changes to the outside pixels only. A value is omitted when its region is empty.
    """

    name: ClassVar[str] = "lpips"
    options: ClassVar[dict] = {"lpips": LPIPS_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {
        "lpips_inside": True,
        "lpips_outside": False,
    }  # the edit should change the region, not the rest
    version: ClassVar[str] = _VERSION  # with the default net; the plan records version_for(the suite's options)
    version_for = staticmethod(_version_for)
    scale: ClassVar[str] = "LPIPS distance >= 0 (0 = identical; lower = more similar)"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_lpips_weights)
    weights_found = staticmethod(models.lpips_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.lpips = models.load_lpips(settings, spatial=True)
        self.weights = self.lpips.weights

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        # Only same-sized images stack into one batch, so batch per target resolution.
        views_by_size: dict[tuple[int, int], list[tuple[int, TransferView]]] = defaultdict(list)
        for index, sample in enumerate(samples):
            view = transfer_view(sample) if sample.task in self.tasks else None
            if view is not None:
                views_by_size[view.target.shape[:2]].append((index, view))

        results: list[list[MetricValue]] = [[] for _ in samples]
        batch_size = self.lpips.batch_size
        for views in views_by_size.values():
            for start in range(0, len(views), batch_size):
                chunk = views[start : start + batch_size]
                for (index, _), values in zip(chunk, self._score([view for _, view in chunk])):
                    results[index] = values
        return results

    @torch.inference_mode()
    def _score(self, views: list[TransferView]) -> list[list[MetricValue]]:
        count = len(views)
        # One forward pass: the first half compares the images as they are (inside), the second half
        # compares them with the masked region greyed out (outside).
        outputs = to_tensor([view.output for view in views] + [fill_region(view.output, view.mask) for view in views])
        targets = to_tensor([view.target for view in views] + [fill_region(view.target, view.mask) for view in views])
        distance_maps = (
            self.lpips.model(
                _to_lpips_range(outputs).to(self.lpips.device), _to_lpips_range(targets).to(self.lpips.device)
            )[:, 0]
            .double()
            .cpu()
        )
        inside = torch.from_numpy(np.stack([view.mask for view in views]))
        outside = ~inside

        values: list[list[MetricValue]] = []
        for i in range(count):
            sample_values = []
            if inside[i].any():
                sample_values.append(MetricValue("lpips_inside", float(distance_maps[i][inside[i]].mean())))
            if outside[i].any():
                sample_values.append(MetricValue("lpips_outside", float(distance_maps[count + i][outside[i]].mean())))
            values.append(sample_values)
        return values


class LpipsDiversity:
    """Mean pairwise LPIPS between the outputs of one group (e.g. one pair x method over seeds):
    "lpips_diversity". Outputs are compared at the first output's resolution. Fewer than two outputs
    give no value.
    """

    name: ClassVar[str] = "lpips_diversity"
    options: ClassVar[dict] = {"lpips": LPIPS_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"lpips_diversity": True}
    version: ClassVar[str] = _VERSION  # with the default net; the plan records version_for(the suite's options)
    version_for = staticmethod(_version_for)
    scale: ClassVar[str] = "mean pairwise LPIPS distance >= 0 (0 = all outputs identical)"
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})
    group_by: ClassVar[str] = SEEDS  # the outputs of one concept and settings over seeds

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_lpips_weights)
    weights_found = staticmethod(models.lpips_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.lpips = models.load_lpips(settings, spatial=False)
        self.weights = self.lpips.weights

    @torch.inference_mode()
    def compute_group(self, samples: Sequence[Sample]) -> list[MetricValue]:
        groups = {sample.group for sample in samples}
        if len(groups) > 1:
            raise ValueError(f"{self.name}: compute_group got samples of several groups: {sorted(map(str, groups))}")
        outputs = [
            output
            for sample in samples
            if sample.task in self.tasks and (output := sample_image(sample, "output_image")) is not None
        ]
        if len(outputs) < 2:
            return []
        size = outputs[0].shape[:2]
        images = _to_lpips_range(to_tensor([resize_image(output, size) for output in outputs]))
        pairs = list(itertools.combinations(range(len(outputs)), 2))

        distances = []
        for start in range(0, len(pairs), self.lpips.batch_size):
            first, second = zip(*pairs[start : start + self.lpips.batch_size])
            batch_distances = self.lpips.model(
                images[list(first)].to(self.lpips.device), images[list(second)].to(self.lpips.device)
            )
            distances.append(batch_distances.flatten().double().cpu())
        return [MetricValue("lpips_diversity", float(torch.cat(distances).mean()))]
