"""Stage registry: every pipeline stage is a pure function registered by name with declared requirements.

A stage function has the signature ``fn(frame: Frame, **params) -> Frame``. It must not keep state between calls.
It declares

* ``requires``: names of *capabilities* that must be provided by an earlier stage (e.g. ``"masks"`` from
  ``segment``, ``"display"`` from ``output``) — checked when a pipeline is built, never halfway through a render;
* ``provides``: capabilities it adds;
* ``params``: default parameter values. Only these keys are accepted from presets or ``--set stage.param=value``;
  the type of each default is used to coerce command-line strings.

Capabilities provided by decode itself: ``"linear"`` (frame.image is linear working-space RGB).

Example::

    @register_stage("exposure", requires=("linear",), params={"ev": 0.0})
    def exposure_stage(frame, ev):
        frame.image *= 2.0 ** ev
        return frame

Reference: kornia (pure functions + thin wrappers), fast-openISP (named stages in an ordered list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .frame import Frame

StageFn = Callable[..., Frame]


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: StageFn
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


_REGISTRY: dict[str, StageSpec] = {}

# Modules that register stages when imported. Imported lazily by ``get_stage`` / ``all_stages`` so that importing the
# registry is cheap and a module's import error surfaces with its name.
STAGE_MODULES = (
    "campipe.isp",
    "campipe.output",
    "campipe.segment_stage",
    "campipe.effects.stages",
)


def register_stage(name: str, *, requires=(), provides=(), params: dict[str, Any] | None = None):
    """Decorator registering ``fn`` as stage ``name``. Re-registering the same name with another function fails."""

    def deco(fn: StageFn) -> StageFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"stage {name!r} is already registered by {_REGISTRY[name].fn.__module__}")
        _REGISTRY[name] = StageSpec(name, fn, tuple(requires), tuple(provides), dict(params or {}),
                                    (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn

    return deco


def _load(mod: str) -> None:
    import importlib

    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as e:  # a module not written yet must not break the others
        if e.name != mod:
            raise


def _load_all() -> None:
    for mod in STAGE_MODULES:
        _load(mod)


def get_stage(name: str) -> StageSpec:
    # stage modules are imported in order until the name is registered: the non-semantic stages (campipe.isp,
    # campipe.output) never import the segmentation and effects modules
    for mod in STAGE_MODULES:
        if name in _REGISTRY:
            break
        _load(mod)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_REGISTRY))}") from None


def all_stages() -> dict[str, StageSpec]:
    _load_all()
    return dict(_REGISTRY)
