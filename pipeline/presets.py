"""Presets: TOML files declaring the ordered stage list and each stage's parameters.

Format (``pipeline/presets/NAME.toml``)::

    description = "one line shown by `campipe styles`"
    extends = "standard"          # optional: start from another preset (stage list and parameters)
    stages = ["wb", "highlights", "segment", ...]   # required unless extends
    [style]                        # one table per stage: its parameters
    warmth = 0.4

Validation happens on load and names the offending key (``warm.toml: style.warmth: expected float ...``).
``--style`` takes a built-in name or a path to a .toml file. ``--set stage.param=value`` overrides apply on top.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pipeline import Pipeline, PipelineError, build_pipeline

PRESET_DIR = Path(__file__).with_name("presets")
_TOP_KEYS = {"description", "extends", "stages"}


class PresetError(PipelineError):
    """A preset file that cannot be used; the message names the file and the key."""


@dataclass
class Preset:
    name: str
    description: str
    stages: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def with_overrides(self, sets: list[str] | None) -> "Preset":
        """Apply ``stage.param=value`` strings; unknown stages/params are reported when the pipeline is built."""
        params = {k: dict(v) for k, v in self.params.items()}
        for s in sets or []:
            if "=" not in s or "." not in s.split("=", 1)[0]:
                raise PresetError(f"--set {s!r}: expected stage.param=value")
            key, value = s.split("=", 1)
            stage, param = key.strip().split(".", 1)
            if stage not in self.stages:
                raise PresetError(f"--set {s!r}: stage {stage!r} is not in preset {self.name!r} "
                                  f"(stages: {', '.join(self.stages)})")
            params.setdefault(stage, {})[param.strip()] = value.strip()
        return Preset(self.name, self.description, list(self.stages), params, self.path)

    def build(self, sets: list[str] | None = None, extra_stages: list[str] | None = None) -> Pipeline:
        p = self.with_overrides(sets)
        stages = list(p.stages)
        for st in extra_stages or []:
            if st not in stages:
                # effects that a flag switches on (e.g. --portrait) go right before the global tone curve
                idx = stages.index("tone") if "tone" in stages else len(stages)
                stages.insert(idx, st)
        try:
            return build_pipeline(stages, p.params, preset_name=p.name)
        except PresetError:
            raise
        except PipelineError as e:
            raise PresetError(f"preset {p.name!r}: {e}") from None


def available_presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.toml"))}


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PresetError(f"preset file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path.name}: invalid TOML: {e}") from None


def load_preset(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> Preset:
    """Load and validate a preset by built-in name or path. Raises :class:`PresetError` naming file and key."""
    s = str(name_or_path)
    builtin = available_presets()
    if s in builtin:
        path = builtin[s]
    elif s.endswith(".toml") or "/" in s or Path(s).exists():
        path = Path(s)
    else:
        raise PresetError(f"unknown style {s!r}; built-in styles: {', '.join(builtin)} (or pass a .toml path)")
    if str(path.resolve()) in _seen:
        raise PresetError(f"{path.name}: 'extends' cycle: {' -> '.join(_seen)}")
    data = _read(path)
    fname = path.name
    if "extends" in data:
        if not isinstance(data["extends"], str):
            raise PresetError(f"{fname}: extends: expected a preset name, got {data['extends']!r}")
        base = load_preset(data["extends"], _seen + (str(path.resolve()),))
        stages = list(base.stages)
        params = {k: dict(v) for k, v in base.params.items()}
    else:
        stages, params = [], {}
    if "stages" in data:
        st = data["stages"]
        if not isinstance(st, list) or not all(isinstance(x, str) for x in st):
            raise PresetError(f"{fname}: stages: expected a list of stage names")
        stages = list(st)
    if not stages:
        raise PresetError(f"{fname}: stages: missing (and no 'extends')")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise PresetError(f"{fname}: description: expected a string")
    for key, value in data.items():
        if key in _TOP_KEYS:
            continue
        if not isinstance(value, dict):
            raise PresetError(f"{fname}: {key}: expected a table of stage parameters, got {value!r}")
        params.setdefault(key, {}).update(value)
    preset = Preset(path.stem, desc, stages, params, path)
    # Validate now: stage names, parameter names and types, requirement order.
    try:
        build_pipeline(stages, params, preset_name=preset.name)
    except PipelineError as e:
        raise PresetError(f"{fname}: {e}") from None
    return preset
