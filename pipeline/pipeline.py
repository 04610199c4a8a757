"""Build a pipeline from a preset (the ordered stage list is data) and run it on a frame.

Requirements are checked in :func:`build_pipeline`: a stage whose ``requires`` are not provided by decode or an
earlier stage makes the build fail with a :class:`PipelineError` naming the stage and the missing capability, before
any pixel is touched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CampipeError
from .frame import Frame
from .registry import StageSpec, get_stage

#: Capabilities present right after decode.
DECODE_PROVIDES = ("linear",)


class PipelineError(CampipeError, ValueError):
    """A pipeline that cannot be built (unknown stage, bad parameter, unmet requirement)."""


@dataclass
class BoundStage:
    spec: StageSpec
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, frame: Frame) -> Frame:
        out = self.spec.fn(frame, **self.params)
        if not isinstance(out, Frame):
            raise TypeError(f"stage {self.name!r} returned {type(out).__name__}, expected Frame")
        return out


@dataclass
class Pipeline:
    stages: list[BoundStage]
    preset_name: str = ""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def run(self, frame: Frame, on_stage: Callable[[str, Frame, float], None] | None = None) -> Frame:
        """Run every stage in order; record per-stage wall time in ``frame.timings``.

        ``on_stage(name, frame, seconds)`` is called after each stage (used by ``--dump-stages`` and ``--report``).
        """
        for st in self.stages:
            t0 = time.perf_counter()
            frame = st(frame)
            dt = time.perf_counter() - t0
            frame.timings[st.name] = frame.timings.get(st.name, 0.0) + dt
            if on_stage is not None:
                on_stage(st.name, frame, dt)
        return frame


def coerce_param(stage: str, key: str, default: Any, value: Any) -> Any:
    """Coerce ``value`` (from TOML or a ``--set`` string) to the type of ``default``; error names ``stage.key``."""
    where = f"{stage}.{key}"
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                v = value.strip().lower()
                if v in ("1", "true", "yes", "on"):
                    return True
                if v in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if isinstance(default, (list, tuple)):
            if isinstance(value, str):
                value = [x.strip() for x in value.split(",") if x.strip()]
            return type(default)(value)
        if default is None:
            return value
    except (TypeError, ValueError):
        raise PipelineError(
            f"{where}: expected {type(default).__name__} (default {default!r}), got {value!r}"
        ) from None
    return value


def build_pipeline(stage_names: list[str], params: dict[str, dict[str, Any]] | None = None,
                   preset_name: str = "", provided: tuple[str, ...] = DECODE_PROVIDES) -> Pipeline:
    """Resolve stage names, validate parameters and check that every requirement is met in order."""
    params = params or {}
    have = set(provided)
    bound: list[BoundStage] = []
    for key in params:
        if key not in stage_names:
            raise PipelineError(f"parameters given for stage {key!r}, which is not in this pipeline "
                                f"({', '.join(stage_names)})")
    for name in stage_names:
        try:
            spec = get_stage(name)
        except KeyError as e:
            raise PipelineError(str(e.args[0])) from None
        missing = [r for r in spec.requires if r not in have]
        if missing:
            raise PipelineError(f"stage {name!r} requires {', '.join(missing)}, which no earlier stage provides "
                                f"(order: {' -> '.join(stage_names)})")
        given = params.get(name, {})
        unknown = [k for k in given if k not in spec.params]
        if unknown:
            raise PipelineError(f"unknown parameter {name}.{unknown[0]}; {name} accepts: "
                                f"{', '.join(sorted(spec.params)) or '(none)'}")
        merged = {k: coerce_param(name, k, d, given[k]) if k in given else d for k, d in spec.params.items()}
        bound.append(BoundStage(spec, merged))
        have.update(spec.provides)
    return Pipeline(bound, preset_name, {b.name: dict(b.params) for b in bound})
