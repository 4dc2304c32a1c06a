"""Step 4 of the locality study for every tunable method (read from its `Tunable`, never by name): sweep outputs on
the fitting sets (cached per value), the fitted and calibrated schedules (saved under DIR/schedules/), and the
schedule the comparison uses.

Schedule files per network and method: `<network>-<method>.toml` (the MSE fit on `fitting.process`, what
`schedule = "fitted"` uses), `<network>-<method>-forward.toml` and `-reverse.toml` (the MSE fit on each process)
and `<network>-<method>-calibrated.toml` (Kamb & Ganguli's score-cosine rule on the reverse process).

A method built from heatmaps (PSPC-Flex) is fitted on the reading `heatmaps.reading`; `fit_readings` also fits it on
the other reading when the maps differ (several channels), for the report's comparison of the two readings only:
nothing else uses that fit, and its sweep stages carry the reading in their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from denoiserlab.denoisers.schedules import GridSchedule
from denoiserlab.studies.common.methods import (
    FITTED_SOURCES,
    MethodSpec,
    build_method,
    method_data_key,
    named_schedule,
)
from denoiserlab.studies.locality.fitting import (
    best_per_sigma,
    most_similar_per_sigma,
    save_schedule,
    schedule_from_values,
    sweep_table,
)
from denoiserlab.studies.locality.heatmaps import READINGS
from denoiserlab.studies.locality.stages import StudyContext, stage_outputs


@dataclass
class FitSet:
    """One fitting set of a network: inputs z [L, M, C, H, W] and the reference outputs there."""

    name: str  # set name in stage files ("fit", "fit_reverse-<network>")
    key: dict  # cache key of the set
    z: Tensor
    references: dict[str, Tensor]  # {"network": its outputs, "optimal": the optimal denoiser's}
    per_network: bool  # the set belongs to one network (sweep outputs on it are that network's)


def needs_heatmaps(spec: MethodSpec) -> bool:
    """Whether the method's tunable is built from a network's heatmaps (PSPC-Flex masks)."""
    return spec.tunable is not None and "heatmaps" in spec.tunable.needs


def method_inputs(ctx: StudyContext, spec: MethodSpec, heatmaps: dict, reading: str | None = None) -> tuple[dict, dict]:
    """(inputs, cache key) of what a method's tunable needs from a network (its heatmaps in `reading`, default
    heatmaps.reading), else ({}, {})."""
    if not needs_heatmaps(spec):
        return {}, {}
    reading = reading or ctx.config.heatmaps.reading
    return ({"heatmaps": heatmaps[reading], "heatmap_sigmas": ctx.sigmas},
            {"heatmaps": heatmaps["key"], "reading": reading})


def sweep_values(ctx: StudyContext, spec: MethodSpec) -> tuple:
    """The values swept: [denoisers] NAME.candidates, else the [fitting] key older configs used for this method
    (its Tunable legacy_names), else the method's declared candidates."""
    legacy = spec.tunable.legacy_names
    configured = getattr(ctx.config.fitting, legacy[0]) if legacy else None
    if "candidates" in spec.study_options or configured is None:
        return spec.candidates
    return tuple(dict.fromkeys(spec.tunable.check_value(value) for value in configured))


def sweep_outputs(ctx: StudyContext, spec: MethodSpec, value, fit_set: FitSet, network: str, inputs: dict,
                  inputs_key: dict, suffix: str = "") -> Tensor:
    """Outputs [L, M, ...] of the method at one swept value on one fitting set (a stage of its own, its name
    ending in `suffix`)."""
    owner = f"@{network}" if inputs and not fit_set.per_network else ""
    key = {**spec.key, "data": method_data_key(ctx.data, spec), "value": value, **inputs_key}
    return stage_outputs(ctx, fit_set.name, fit_set.key, fit_set.z, f"{spec.name}={value}{owner}{suffix}", key,
                         lambda: build_method(spec, ctx.data, value, inputs))


def sweep_fits(ctx: StudyContext, network: str, spec: MethodSpec, fit_sets: dict[str, FitSet], inputs: dict,
               inputs_key: dict, suffix: str = "") -> tuple[tuple, dict, dict]:
    """(values swept, sweep tables per process, fits per rule: "mse_<process>" and "cosine_reverse", [L] each)."""
    values = sweep_values(ctx, spec)
    tables = {process: sweep_table([sweep_outputs(ctx, spec, value, fit_set, network, inputs, inputs_key, suffix)
                                    for value in values], fit_set.references, fit_set.z)
              for process, fit_set in fit_sets.items()}
    fits = {f"mse_{process}": best_per_sigma(table["mse_vs_network"], values) for process, table in tables.items()}
    fits["cosine_reverse"] = most_similar_per_sigma(tables["reverse"]["score_cosine_median"], values)
    return values, tables, fits


def fit_method(ctx: StudyContext, network: str, spec: MethodSpec, fit_sets: dict[str, FitSet],
               heatmaps: dict) -> dict:
    """Sweep tables per process, the fitted schedules (files saved) and the schedule the comparison uses."""
    inputs, inputs_key = method_inputs(ctx, spec, heatmaps)
    values, tables, fits = sweep_fits(ctx, network, spec, fit_sets, inputs, inputs_key)
    fitted = fits[f"mse_{ctx.config.fitting.process}"]
    files = save_fitted_schedules(ctx, network, spec, fitted, fits)
    schedule, source = chosen_schedule(ctx, spec, fitted, fits["cosine_reverse"])
    return {"option": spec.tunable.name, "legacy_names": spec.tunable.legacy_names, "values": list(values),
            "tables": tables, "fitted": fitted, "fits": fits, "file": files["fitted"],
            "files": files, "schedule": schedule, "schedule_source": source, "inputs": inputs,
            "inputs_key": inputs_key}


def save_fitted_schedules(ctx: StudyContext, network: str, spec: MethodSpec, fitted: list, fits: dict) -> dict:
    """Write the schedule files of one network and method (module docstring); returns {what: path}."""
    folder, kind = ctx.out / "schedules", spec.tunable.kind
    files = {"fitted": (fitted, f"{network}-{spec.name}.toml"),
             "mse_forward": (fits.get("mse_forward"), f"{network}-{spec.name}-forward.toml"),
             "mse_reverse": (fits.get("mse_reverse"), f"{network}-{spec.name}-reverse.toml"),
             "cosine_reverse": (fits.get("cosine_reverse"), f"{network}-{spec.name}-calibrated.toml")}
    return {what: str(save_schedule(schedule_from_values(kind, values, ctx.config.sigmas), folder / name))
            for what, (values, name) in files.items() if values is not None}


def chosen_schedule(ctx: StudyContext, spec: MethodSpec, fitted: list, calibrated: list) -> tuple[GridSchedule, str]:
    """(schedule, source) the comparison uses: the MSE fit ("fitted"), the cosine fit ("calibrated"), or the
    schedule the config names ("cifar10" or a file)."""
    if spec.schedule in FITTED_SOURCES:
        values = fitted if spec.schedule == "fitted" else calibrated
        return schedule_from_values(spec.tunable.kind, values, ctx.config.sigmas), spec.schedule
    return named_schedule(spec), spec.schedule


def fixed_schedule(ctx: StudyContext, spec: MethodSpec) -> GridSchedule:
    """A fixed tuned value as a one-point schedule (the same value at every sigma), for reports."""
    return schedule_from_values(spec.tunable.kind, [spec.fixed], ctx.config.sigmas)


def tuned_factory(ctx: StudyContext, spec: MethodSpec, value, inputs: dict) -> Callable:
    """() -> the method built with the tuned value or schedule `value` and its inputs."""
    return lambda: build_method(spec, ctx.data, value, inputs)


def fit_readings(ctx: StudyContext, network: str, specs: list[MethodSpec], fit_sets: dict[str, FitSet],
                 heatmaps: dict, fitting: dict) -> dict:
    """The heatmap readings compared for one network: {"used": heatmaps.reading, "equal": whether the maps of the
    two readings are identical (one channel; None when the heatmaps hold one reading), "fitted": {method: {reading:
    [L]}}, the MSE fit on fitting.process of every fitted method built from heatmaps under each reading, and
    "fit_mse": {method: {reading: [L]}}, its MSE per element to the network there}. The other reading is swept
    only when its maps differ; `fitting` holds the fits of the used reading (fit_method)."""
    used, process = ctx.config.heatmaps.reading, ctx.config.fitting.process
    present = [reading for reading in READINGS if reading in heatmaps]
    equal = torch.equal(heatmaps[READINGS[0]], heatmaps[READINGS[1]]) if len(present) == 2 else None
    table = {"used": used, "equal": equal, "fitted": {}, "fit_mse": {}}
    for spec in (spec for spec in specs if needs_heatmaps(spec)):
        for reading in present:
            if reading == used or equal:
                fitted, tables = fitting[spec.name]["fitted"], fitting[spec.name]["tables"]
            else:
                inputs, inputs_key = method_inputs(ctx, spec, heatmaps, reading)
                _, tables, fits = sweep_fits(ctx, network, spec, fit_sets, inputs, inputs_key, f"-{reading}")
                fitted = fits[f"mse_{process}"]
            table["fitted"].setdefault(spec.name, {})[reading] = list(fitted)
            mse = tables[process]["mse_vs_network"].nan_to_num(torch.inf).min(0).values  # [L]: at the fitted value
            table["fit_mse"].setdefault(spec.name, {})[reading] = mse.tolist()
    return table
