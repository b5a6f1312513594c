"""What crosses from a student's sandboxed process back to the grader: plain data, never code.

Used by trusted grading (``tools/grading_runner.py`` serves the student's functions,
``tools/trusted_runner.py`` runs the tests): the tests call a stand-in for each student function;
the stand-in sends the arguments to the sandbox (the grader's own objects, pickled: the sandbox
may unpickle what the grader sends), the student's real function runs there, and what comes back
is only

- the result, as numbers, strings, tensors, lists, tuples and dicts of them; a parameter of one
  of the arguments as a reference to it; any other module as a handle (calling it calls the
  student's module in the sandbox); a ``History`` as its records;
- what the call did to its arguments: for a module, its layers (from an allow-list of layer
  types), weights, buffers, ``requires_grad`` flags, train/eval modes, hook counts and
  BatchNorm momenta; for a tensor, list or dict, its new contents;
- the random number generator's state afterwards, so that the tests see the random stream they
  would see if the function had run in their own process.

It is serialised with ``torch.save`` and read with ``torch.load(weights_only=True)``, whose
unpickler builds nothing but tensors and Python containers, so nothing the student's process
sends can run code in the grader.
"""

from __future__ import annotations

import io

import torch
from torch import nn

KIND = "__plain_kind__"


class NotPlainData(TypeError):
    """A value that cannot be brought back from the sandbox (the message names its type)."""


# Layer types the grader may build from a description, with the settings that describe them.
BUILDABLE = {
    "torch.nn.modules.linear.Linear": (lambda c: nn.Linear(c["in_features"], c["out_features"], bias=c["bias"]),
                                       lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                                  "bias": m.bias is not None}),
    "torch.nn.modules.linear.Identity": (lambda c: nn.Identity(), lambda m: {}),
    "torch.nn.modules.flatten.Flatten": (lambda c: nn.Flatten(c["start_dim"], c["end_dim"]),
                                         lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "torch.nn.modules.dropout.Dropout": (lambda c: nn.Dropout(c["p"]), lambda m: {"p": m.p}),
    "torch.nn.modules.container.Sequential": (lambda c: nn.Sequential(), lambda m: {}),
    "torch.nn.modules.activation.ReLU": (lambda c: nn.ReLU(), lambda m: {}),
    "torch.nn.modules.batchnorm.BatchNorm1d": (lambda c: nn.BatchNorm1d(c["num_features"]),
                                               lambda m: {"num_features": m.num_features}),
}


def type_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def dumps(data) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def loads(payload: bytes):
    return torch.load(io.BytesIO(payload), weights_only=True)


# --- in the sandbox: turning the student's values into plain data ------------------------------

def _parameter_owners(arguments: list) -> dict[int, tuple[int, str]]:
    owners = {}
    for position, argument in enumerate(arguments):
        if isinstance(argument, nn.Module):
            for name, parameter in argument.named_parameters():
                owners.setdefault(id(parameter), (position, name))
    return owners


def to_plain(value, arguments: list, handles: list, _owners=None, _depth: int = 0):
    """``value`` as plain data; modules that are not arguments are kept in ``handles`` and sent as a handle."""
    owners = _parameter_owners(arguments) if _owners is None else _owners
    if _depth > 20:
        raise NotPlainData("a result nested more than 20 levels deep")

    def again(item):
        return to_plain(item, arguments, handles, owners, _depth + 1)

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, nn.Parameter) and id(value) in owners:
        position, name = owners[id(value)]
        return {KIND: "parameter", "argument": position, "name": name}
    if isinstance(value, torch.Tensor):
        return {KIND: "tensor", "value": value.detach().cpu().clone(), "requires_grad": bool(value.requires_grad)}
    if isinstance(value, (list, tuple)):
        return {KIND: type(value).__name__ if type(value) in (list, tuple) else "tuple", "items": [again(v) for v in value]}
    if isinstance(value, dict):
        return {KIND: "dict", "items": [[again(k), again(v)] for k, v in value.items()]}
    if isinstance(value, nn.Module):
        for position, argument in enumerate(arguments):
            if value is argument:
                return {KIND: "argument", "argument": position}
        handles.append(value)
        return {KIND: "module", "handle": len(handles) - 1, "type": type_name(value)}
    if type_name(value) == "course_lib.history.History":
        return {KIND: "history", "records": again(list(value.records))}
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        return value.item()  # a NumPy scalar
    if type_name(value) == "numpy.ndarray":
        return {KIND: "tensor", "value": torch.as_tensor(value).clone(), "requires_grad": False}
    raise NotPlainData(f"the grader cannot take a {type_name(value)} back from the function")


def module_state(module: nn.Module) -> dict:
    """What a module is after a call: its layers, weights, buffers, flags, modes and hook counts."""
    layers = []
    for path, layer in module.named_modules():
        name = type_name(layer)
        config = BUILDABLE[name][1](layer) if name in BUILDABLE else {}
        layers.append([path, name, config])
    return {
        "layers": layers,
        "state": {key: value.detach().cpu().clone() for key, value in module.state_dict().items()},
        "requires_grad": [[name, bool(p.requires_grad)] for name, p in module.named_parameters()],
        "training": [[path, bool(layer.training)] for path, layer in module.named_modules()],
        "hooks": [[path, len(layer._forward_hooks) + len(layer._forward_pre_hooks)]
                  for path, layer in module.named_modules()],
        # A BatchNorm's momentum is a setting, not a buffer: 19.4's AdaBN exercise must restore it.
        "momentum": [[path, layer.momentum] for path, layer in module.named_modules()
                     if isinstance(layer, nn.modules.batchnorm._BatchNorm)],
    }


def argument_changes(arguments: list, before: list) -> list:
    """For each argument, what to apply to the grader's copy: a module's state, a tensor's or container's contents."""
    changes = []
    for argument, kept in zip(arguments, before):
        if isinstance(argument, nn.Module):
            changes.append({KIND: "module_state", "state": module_state(argument)})
        elif isinstance(argument, torch.Tensor) and not (argument.shape == kept.shape and torch.equal(argument, kept)):
            changes.append({KIND: "tensor_contents", "value": argument.detach().cpu().clone()})
        elif isinstance(argument, (list, dict)) and argument != kept:
            changes.append({KIND: "contents", "value": to_plain(argument, [], [])})
        else:
            changes.append(None)
    return changes


def snapshot_arguments(arguments: list) -> list:
    """What the arguments were before the call (to see which tensors and containers it changed)."""
    kept = []
    for argument in arguments:
        if isinstance(argument, torch.Tensor):
            kept.append(argument.detach().clone())
        elif isinstance(argument, list):
            kept.append(list(argument))
        elif isinstance(argument, dict):
            kept.append(dict(argument))
        else:
            kept.append(None)
    return kept


# --- in the grader: plain data back into values --------------------------------------------------

def from_plain(data, arguments: list, remote_module):
    """The value ``data`` describes; ``remote_module(handle, type)`` makes the stand-in for a student's module."""
    def again(item):
        return from_plain(item, arguments, remote_module)

    if not isinstance(data, dict) or KIND not in data:
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        raise NotPlainData(f"unexpected data from the sandbox: {type(data).__name__}")
    kind = data[KIND]
    if kind == "tensor":
        value = data["value"]
        return value.requires_grad_(True) if data["requires_grad"] and value.is_floating_point() else value
    if kind == "parameter":
        owner = arguments[data["argument"]]
        return dict(owner.named_parameters())[data["name"]]
    if kind in ("list", "tuple"):
        items = [again(item) for item in data["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {again(k): again(v) for k, v in data["items"]}
    if kind == "argument":
        return arguments[data["argument"]]
    if kind == "module":
        return remote_module(int(data["handle"]), str(data["type"]))
    if kind == "history":
        from course_lib.history import History
        return History(again(data["records"]))
    raise NotPlainData(f"unknown kind of data from the sandbox: {kind!r}")


def apply_module_state(module: nn.Module, state: dict) -> None:
    """Make the grader's ``module`` what the student's call left its copy: layers, weights, flags, modes, hooks."""
    for path, name, config in state["layers"]:
        if not path:
            if type_name(module) != name:
                raise NotPlainData(f"the function turned the model into a {name}")
            continue
        try:
            current = module.get_submodule(path)
        except AttributeError:
            current = None
        if current is None or type_name(current) != name or (name in BUILDABLE and BUILDABLE[name][1](current) != config):
            if name not in BUILDABLE:
                raise NotPlainData(f"the function put a {name} at {path!r}, which the grader cannot rebuild")
            if _has_parent(module, path):
                module.set_submodule(path, BUILDABLE[name][0](config))
    wanted = {path for path, _, _ in state["layers"]}
    for path, _ in list(module.named_modules()):
        if path and path not in wanted and _has_parent(module, path):
            parent, _, child = path.rpartition(".")
            delattr(module.get_submodule(parent) if parent else module, child)
    module.load_state_dict(state["state"], strict=True)
    parameters = dict(module.named_parameters())
    for name, flag in state["requires_grad"]:
        parameters[name].requires_grad_(flag)
    layers = dict(module.named_modules())
    for path, flag in state["training"]:
        layers[path].training = flag
    for path, momentum in state.get("momentum", []):
        if momentum is not None and not isinstance(momentum, (int, float)):
            raise NotPlainData(f"the BatchNorm at {path!r} was given a momentum of type {type(momentum).__name__}")
        layers[path].momentum = momentum
    for path, count in state["hooks"]:
        layer = layers[path]
        # The student's hooks cannot come back; stand-ins that do nothing keep the count the tests check.
        while len(layer._forward_hooks) + len(layer._forward_pre_hooks) < count:
            layer.register_forward_hook(_stand_in_hook)
        while len(layer._forward_hooks) + len(layer._forward_pre_hooks) > count and layer._forward_hooks:
            layer._forward_hooks.popitem()


def _stand_in_hook(module, inputs, output):
    return None


def _has_parent(module: nn.Module, path: str) -> bool:
    parent = path.rpartition(".")[0]
    try:
        module.get_submodule(parent) if parent else module
    except AttributeError:
        return False
    return True


def apply_argument_changes(arguments: list, changes: list) -> None:
    """Apply :func:`argument_changes` to the grader's own arguments."""
    for argument, change in zip(arguments, changes):
        if change is None:
            continue
        if change[KIND] == "module_state":
            apply_module_state(argument, change["state"])
        elif change[KIND] == "tensor_contents":
            with torch.no_grad():
                if argument.shape == change["value"].shape:
                    argument.copy_(change["value"])
                else:
                    argument.data = change["value"]
        elif change[KIND] == "contents":
            value = from_plain(change["value"], [], lambda h, t: None)
            if isinstance(argument, list):
                argument[:] = value
            else:
                argument.clear()
                argument.update(value)
