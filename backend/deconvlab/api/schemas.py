"""Pydantic models of every request and JSON answer (the shapes of ``api/README.md``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool  # every model loaded
    models: dict[str, bool]  # model id -> loaded
    index: dict[str, str]  # model id -> "ready" | "missing" | "stale: <why>" | "queued" | "building" | "no data set"


class LayerInfo(BaseModel):
    name: str  # paper name (conv5), module path (layer3.1) or torch.fx op name (layer1.0.add)
    kind: Literal["conv", "fc", "op"]  # op: a functional op's (C, H, W) output (an add, a cat, F.relu)
    type: str | None = None  # the module's class (Conv2d, BasicBlock) or the op's name (add)
    channels: int
    shape: list[int]  # [C, H, W] or [C]
    parent: str | None = None  # module path of the enclosing block (layer3.1 for layer3.1.conv1); None at the top


class ModelInfo(BaseModel):
    id: str
    arch: str
    input_size: int
    classes: list[str]
    layers: list[LayerInfo]
    engine: str = "sequential"  # "sequential" (the paper's flat nets) or "graph" (any nn.Module)
    untraceable: str | None = None  # why torch.fx could not trace the model: then only module-path layers exist


class Models(BaseModel):
    default: str
    models: list[ModelInfo]


class ImageInfo(BaseModel):
    image_id: str
    width: int
    height: int


class Prediction(BaseModel):
    class_index: int
    label: str
    probability: float


class Predictions(BaseModel):
    image_id: str
    model: str
    predictions: list[Prediction]


class UnitSummary(BaseModel):
    unit: int
    max: float
    min: float  # with max: the ends of the colour scale of the unit's map.png (viridis on its own range)
    mean: float
    argmax: list[int] | None  # [y, x]; None for fc layers


class LayerSummary(BaseModel):
    image_id: str
    model: str
    layer: str
    kind: Literal["conv", "fc", "op"]
    shape: list[int]
    units: list[UnitSummary]


class UnitDetail(BaseModel):
    unit: int
    layer: str
    max: float
    position: list[int] | None  # [y, x] of the strongest activation; None for fc layers
    box: list[int]  # [top, left, bottom, right] in input pixels, bottom/right exclusive
    map_url: str
    projection_url: str


class TopEntry(BaseModel):
    rank: int
    image_index: int
    image_id: str
    label: str
    value: float
    position: list[int] | None
    box: list[int]
    patch_url: str
    projection_url: str
    image_url: str


class Top(BaseModel):
    model: str
    layer: str
    unit: int
    entries: list[TopEntry]


class FilterStat(BaseModel):
    unit: int
    norm: float  # L2 norm of the filter's weights (bias left out)
    rms: float  # norm / sqrt(weights per filter)
    dead: bool  # by weight: rms below the rule's fraction of the layer's median rms


class Filters(BaseModel):
    model: str
    layer: str
    filters: list[FilterStat]
    dead: int  # how many are dead by weight
    median_rms: float
    rule: str  # "dead" in words: RMS of its weights below 0.05 of the median filter RMS of its layer
    mosaic_url: str


class Sample(BaseModel):
    image_index: int
    label: str
    url: str


class Samples(BaseModel):
    samples: list[Sample]


class OcclusionRequest(BaseModel):
    # strict: JSON types as they are; true is not 1 and "32" is not 32 (422 naming the field)
    model_config = ConfigDict(strict=True)

    size: int = Field(32, description="side of the grey square, input pixels")
    stride: int = Field(8, description="step between square positions, input pixels")
    layer: str = Field("conv5", description="layer whose strongest feature map is tracked; left out on a "
                                            "model without conv5: its last conv layer with a map over 1x1")
    class_index: int | None = Field(None, description="class whose probability is mapped; default: top-1")


class OcclusionUrls(BaseModel):
    activation: str
    probability: str
    top_class: str


class OcclusionResponse(BaseModel):
    occlusion_id: str
    image_id: str
    model: str
    size: int
    stride: int
    grid: list[int]  # [gh, gw]
    layer: str
    feature_map: int
    class_index: int
    class_label: str
    activation: list[list[float]]
    probability: list[list[float]]
    top_class: list[list[int]]
    top_class_labels: dict[str, str]
    urls: OcclusionUrls
