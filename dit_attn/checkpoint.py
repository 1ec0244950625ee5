"""Optimizer state as safetensors tensors + JSON settings, so that training checkpoints resume without
unpickling anything (``torch.save``/accelerate's ``save_state`` write pickles).

Example::

    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> model(torch.randn(4, 3)).sum().backward()
    >>> opt.step()
    >>> tensors, groups = optimizer_tensors(opt)
    >>> sorted(tensors)[:3]
    ['opt/0/exp_avg', 'opt/0/exp_avg_sq', 'opt/0/step']
    >>> fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> load_optimizer_tensors(fresh, tensors, groups)
    >>> torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    True
"""

from __future__ import annotations

import json

import torch


def optimizer_tensors(optimizer, prefix: str = "opt/") -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``optimizer.state_dict()`` split into CPU tensors named ``{prefix}{param_id}/{key}`` (for a safetensors
    file) and its ``param_groups`` (plain JSON values)."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}{pid}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
    groups = json.loads(json.dumps(sd["param_groups"]))  # fails early on a setting that JSON cannot hold
    return tensors, groups


def load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict],
                           prefix: str = "opt/") -> None:
    """Inverse of :func:`optimizer_tensors`; tensors without ``prefix`` are ignored (the same file may hold the
    model's weights)."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            pid, key = name[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
