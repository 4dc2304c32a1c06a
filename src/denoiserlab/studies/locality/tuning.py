"""Step 4 of the locality study for every tunable method (read from its `Tunable`, never by name): sweep outputs on
the fitting sets (cached per value), the fitted and calibrated schedules (saved under DIR/schedules/), and the
schedule the comparison uses.

Schedule files per network and method: `<network>-<method>.toml` (the MSE fit on `fitting.process`, what
`schedule = "fitted"` uses), `<network>-<method>-forward.toml` and `-reverse.toml` (the MSE fit on each process)
and `<network>-<method>-calibrated.toml` (Kamb & Ganguli's score-cosine rule on the reverse process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
from denoiserlab.studies.locality.stages import StudyContext, stage_outputs


@dataclass
class FitSet:
    """One fitting set of a network: inputs z [L, M, C, H, W] and the reference outputs there."""

    name: str  # set name in stage files ("fit", "fit_reverse-<network>")
    key: dict  # cache key of the set
    z: Tensor
    references: dict[str, Tensor]  # {"network": its outputs, "optimal": the optimal denoiser's}
    per_network: bool  # the set belongs to one network (sweep outputs on it are that network's)


def method_inputs(ctx: StudyContext, spec: MethodSpec, heatmaps: dict) -> tuple[dict, dict]:
    """(inputs, cache key) of what a method's tunable needs from a network (its heatmaps), else ({}, {})."""
    if spec.tunable is None or "heatmaps" not in spec.tunable.needs:
        return {}, {}
    reading = ctx.config.heatmaps.reading
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
                  inputs_key: dict) -> Tensor:
    """Outputs [L, M, ...] of the method at one swept value on one fitting set (a stage of its own)."""
    owner = f"@{network}" if inputs and not fit_set.per_network else ""
    key = {**spec.key, "data": method_data_key(ctx.data, spec), "value": value, **inputs_key}
    return stage_outputs(ctx, fit_set.name, fit_set.key, fit_set.z, f"{spec.name}={value}{owner}", key,
                         lambda: build_method(spec, ctx.data, value, inputs))


def fit_method(ctx: StudyContext, network: str, spec: MethodSpec, fit_sets: dict[str, FitSet],
               heatmaps: dict) -> dict:
    """Sweep tables per process, the fitted schedules (files saved) and the schedule the comparison uses."""
    values = sweep_values(ctx, spec)
    inputs, inputs_key = method_inputs(ctx, spec, heatmaps)
    tables = {process: sweep_table([sweep_outputs(ctx, spec, value, fit_set, network, inputs, inputs_key)
                                    for value in values], fit_set.references, fit_set.z)
              for process, fit_set in fit_sets.items()}
    fits = {f"mse_{process}": best_per_sigma(table["mse_vs_network"], values) for process, table in tables.items()}
    fits["cosine_reverse"] = most_similar_per_sigma(tables["reverse"]["score_cosine_median"], values)
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
