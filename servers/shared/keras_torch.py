"""A Keras model rebuilt in PyTorch layer by layer, with the Keras model's own weights.

Two halves. `describe` (build time: imports Keras) reads a Keras functional model into a plain
description of its layers (`LayerSpec` dicts: what each is, its sizes, which earlier values it
takes) and their weights in torch's layouts. `build` (serving: torch alone, no Keras) makes the
torch module from that description; `load_state_dict` fills it. The file the servers load is
`torch.save` of {description, state_dict} (FILE_FORMAT): a state dict and the code that builds
the module, which is how PyTorch models are most often shipped, read back with
`torch.load(weights_only=True)`, so no pickled code runs, and across torch versions (the
machines lent with a GPU carry an older torch than ours).

The module takes the servers' batch as Keras does, (N, H, W, C) float32, and moves it to
torch's (N, C, H, W) once at the start; every image-shaped value inside is channels first.
The layouts moved:

    Conv2D              kernel (kh, kw, in, out)        -> (out, in, kh, kw)
    DepthwiseConv2D     kernel (kh, kw, in, mult)       -> (in * mult, 1, kh, kw), groups = in
    Dense               kernel (in, out)                -> (out, in)
    BatchNormalization  gamma, beta, moving mean and variance, and Keras' epsilon (1e-3 in
                        MobileNetV2, not torch's 1e-5); momentum only matters in training
    padding "same"      TensorFlow pads the bottom and right more when the total is odd (a
                        stride-2 convolution): explicit zero padding, computed per layer from
                        its static input size, then a "valid" convolution
    Flatten             back to (N, H, W, C) first, so the features are in Keras' order

A layer with no counterpart here is a ValueError naming it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FILE_FORMAT = "infbench-keras-graph"
FILE_VERSION = 1
ACTIVATIONS = ("linear", "relu", "relu6", "softmax", "sigmoid", "tanh")
LayerSpec = dict[str, Any]  # "kind" and its sizes: plain JSON-able values


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if name == "softmax":
        return torch.softmax(x, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    return x


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one spatial axis: (before, after); after gets the odd
    one."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


# ---------------------------------------------------------------------------------------------
# The torch side: modules built from a description (torch alone)


class Conv(nn.Module):
    """A Keras Conv2D or DepthwiseConv2D: explicit padding, the convolution, the activation."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel"]),
                              stride=tuple(spec["stride"]), dilation=tuple(spec["dilation"]),
                              groups=spec["groups"], bias=spec["bias"])
        self.pad = tuple(spec["pad"])  # F.pad's order: left, right, top, bottom
        self.activation = spec["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return _activate(self.conv(x), self.activation)


class Dense(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        self.activation = spec["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self.linear(x), self.activation)


def _batchnorm(spec: LayerSpec) -> nn.Module:
    kind = nn.BatchNorm2d if spec["rank"] == 4 else nn.BatchNorm1d
    return kind(spec["channels"], eps=spec["eps"])


class Pad(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.pad = tuple(spec["pad"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class ReLU(nn.Module):
    """Keras' ReLU layer: max(x, 0), capped at max_value when it has one (ReLU6)."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.max_value = spec["max_value"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_value is None:
            return F.relu(x)
        return torch.clamp(x, 0.0, self.max_value)


class Activation(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.name = spec["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(x, self.name)


class Add(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class GlobalAveragePool(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.keepdims = spec["keepdims"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


class MaxPool(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.kernel = tuple(spec["kernel"])
        self.stride = tuple(spec["stride"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride)


class Flatten(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)  # Keras flattens (H, W, C) in that order
        return x.flatten(1)


MODULES: dict[str, Any] = {
    "conv": Conv, "dense": Dense, "batchnorm": _batchnorm, "pad": Pad, "relu": ReLU,
    "activation": Activation, "add": Add, "global_average_pool": GlobalAveragePool,
    "max_pool": MaxPool, "flatten": Flatten,
}


class KerasGraph(nn.Module):
    """The layers in the Keras graph's order; `wires[i]` are the indices of layer i's inputs
    among the values so far (0 is the model's input, already channels first)."""

    def __init__(self, layers: list[nn.Module], wires: list[list[int]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.wires = wires

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x.permute(0, 3, 1, 2)]
        for layer, wire in zip(self.layers, self.wires, strict=True):
            values.append(layer(*[values[i] for i in wire]))
        out = values[-1]
        # An image-shaped output goes back to Keras' channels last.
        return out.permute(0, 2, 3, 1) if out.dim() == 4 else out


def build(layers: list[LayerSpec]) -> KerasGraph:
    """The torch module a description makes, in eval mode, its weights not yet loaded."""
    made: list[nn.Module] = []
    for spec in layers:
        make = MODULES.get(spec.get("kind", ""))
        if make is None:
            raise ValueError(f"layer kind {spec.get('kind')!r} is not one of "
                             f"{', '.join(MODULES)}")
        made.append(make(spec))
    return KerasGraph(made, [list(s["inputs"]) for s in layers]).eval()


def from_file(doc: Any) -> tuple[KerasGraph, list[Any]]:
    """The module a saved file's content (torch.load) describes, its weights loaded; and the
    model's input shape."""
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise ValueError(f"not a {FILE_FORMAT} file")
    if doc.get("version") != FILE_VERSION:
        raise ValueError(f"{FILE_FORMAT} version {doc.get('version')!r}; this code reads "
                         f"version {FILE_VERSION}")
    module = build(doc["layers"])
    module.load_state_dict(doc["state_dict"], strict=True)
    return module, list(doc["input_shape"])


# ---------------------------------------------------------------------------------------------
# The Keras side: a model described, its weights in torch's layouts (imports Keras)


def _activation_name(layer: Any) -> str:
    act = layer.get_config().get("activation", "linear")
    name = act if isinstance(act, str) else getattr(act, "__name__", str(act))
    if name not in ACTIVATIONS:
        raise ValueError(f"layer {layer.name!r}: activation {name!r} has no torch counterpart "
                         f"here (known: {', '.join(ACTIVATIONS)})")
    if name == "softmax" and len(layer.output.shape) != 2:
        raise ValueError(f"layer {layer.name!r}: softmax is supported on (N, features) only")
    return name


def _conv(layer: Any, depthwise: bool) -> tuple[LayerSpec, dict[str, np.ndarray]]:
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"layer {layer.name!r}: only channels_last is supported")
    weights = layer.get_weights()
    kernel = np.asarray(weights[0])
    kh, kw = kernel.shape[:2]
    (sh, sw), (dh, dw) = cfg["strides"], cfg["dilation_rate"]
    cin = kernel.shape[2]
    if depthwise:
        mult = kernel.shape[3]
        w = kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        cout, groups = cin * mult, cin
    else:
        groups = int(cfg.get("groups", 1))
        w = kernel.transpose(3, 2, 0, 1)
        cout, cin = kernel.shape[3], cin * groups
    pad = [0, 0, 0, 0]
    if cfg["padding"] == "same":
        _, h, wdt, _ = layer.input.shape
        top, bottom = same_padding(int(h), kh, sh, dh)
        left, right = same_padding(int(wdt), kw, sw, dw)
        pad = [left, right, top, bottom]
    elif cfg["padding"] != "valid":
        raise ValueError(f"layer {layer.name!r}: padding {cfg['padding']!r} is not supported")
    bias = bool(cfg.get("use_bias", True))
    spec = {"kind": "conv", "in_channels": int(cin), "out_channels": int(cout),
            "kernel": [int(kh), int(kw)], "stride": [int(sh), int(sw)],
            "dilation": [int(dh), int(dw)], "groups": int(groups), "bias": bias, "pad": pad,
            "activation": _activation_name(layer)}
    state = {"conv.weight": w}
    if bias:
        state["conv.bias"] = np.asarray(weights[1])
    return spec, state


def _batchnorm_of(layer: Any) -> tuple[LayerSpec, dict[str, np.ndarray]]:
    cfg = layer.get_config()
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list | tuple) else axis
    rank = len(layer.input.shape)
    if axis not in (-1, rank - 1) or rank not in (2, 4):
        raise ValueError(f"layer {layer.name!r}: BatchNormalization over axis {axis} of a rank "
                         f"{rank} input is not supported (channels last only)")
    weights = [np.asarray(w) for w in layer.get_weights()]
    channels = int(layer.input.shape[-1])
    gamma = weights.pop(0) if cfg.get("scale", True) else np.ones(channels)
    beta = weights.pop(0) if cfg.get("center", True) else np.zeros(channels)
    mean, var = weights
    spec = {"kind": "batchnorm", "channels": channels, "eps": float(cfg["epsilon"]),
            "rank": rank}
    return spec, {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var,
                  "num_batches_tracked": np.zeros((), dtype=np.int64)}


def _describe_layer(layer: Any) -> tuple[LayerSpec, dict[str, np.ndarray]]:
    import keras

    L = keras.layers
    cfg = layer.get_config()
    if isinstance(layer, L.DepthwiseConv2D):
        return _conv(layer, depthwise=True)
    if isinstance(layer, L.Conv2D):
        return _conv(layer, depthwise=False)
    if isinstance(layer, L.BatchNormalization):
        return _batchnorm_of(layer)
    if isinstance(layer, L.Dense):
        kernel, *bias = [np.asarray(w) for w in layer.get_weights()]
        spec = {"kind": "dense", "in_features": int(kernel.shape[0]),
                "out_features": int(kernel.shape[1]), "bias": bool(bias),
                "activation": _activation_name(layer)}
        state = {"linear.weight": kernel.T}
        if bias:
            state["linear.bias"] = bias[0]
        return spec, state
    if isinstance(layer, L.ReLU):
        if cfg.get("negative_slope", 0.0) or cfg.get("threshold", 0.0):
            raise ValueError(f"layer {layer.name!r}: a ReLU with a slope or threshold is not "
                             "supported")
        mv = cfg.get("max_value")
        return {"kind": "relu", "max_value": None if mv is None else float(mv)}, {}
    if isinstance(layer, L.Activation):
        return {"kind": "activation", "activation": _activation_name(layer)}, {}
    if isinstance(layer, L.ZeroPadding2D):
        (top, bottom), (left, right) = cfg["padding"]
        return {"kind": "pad", "pad": [int(left), int(right), int(top), int(bottom)]}, {}
    if isinstance(layer, L.Add):
        return {"kind": "add"}, {}
    if isinstance(layer, L.GlobalAveragePooling2D):
        return {"kind": "global_average_pool", "keepdims": bool(cfg.get("keepdims", False))}, {}
    if isinstance(layer, L.MaxPooling2D):
        if cfg["padding"] != "valid":
            raise ValueError(f"layer {layer.name!r}: only padding 'valid' is supported")
        return {"kind": "max_pool", "kernel": [int(k) for k in cfg["pool_size"]],
                "stride": [int(s) for s in cfg["strides"]]}, {}
    if isinstance(layer, L.Flatten):
        return {"kind": "flatten"}, {}
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no torch counterpart "
                     "here (servers/shared/keras_torch.py)")


def describe(model: Any) -> dict[str, Any]:
    """The Keras functional `model` (one image input, one output) as the content of a file of
    ours: FILE_FORMAT's description and the weights as a torch state dict."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("only models with one input and one output are converted")
    index = {id(model.inputs[0]): 0}
    layers: list[LayerSpec] = []
    state: dict[str, torch.Tensor] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            wire = [index[id(t)] for t in keras.tree.flatten(layer.input)]
        except KeyError:
            raise ValueError(f"layer {layer.name!r}: its input is not an earlier layer's "
                             "output (a nested or shared layer)") from None
        spec, weights = _describe_layer(layer)
        spec["inputs"] = wire
        spec["name"] = layer.name
        n = len(layers)
        state.update({f"layers.{n}.{k}": torch.from_numpy(np.ascontiguousarray(
            v if v.dtype == np.int64 else v.astype(np.float32))) for k, v in weights.items()})
        layers.append(spec)
        index[id(layer.output)] = n + 1
    if index.get(id(model.outputs[0])) != len(layers):
        raise ValueError("the model's output is not its last layer's")
    return {"format": FILE_FORMAT, "version": FILE_VERSION, "torch": str(torch.__version__),
            "input_shape": [None, *[int(d) for d in model.input_shape[1:]]],
            "layout": "NHWC float32", "layers": layers, "state_dict": state}
