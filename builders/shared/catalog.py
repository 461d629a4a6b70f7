"""Load and validate ``catalog.yaml``: models, traits, prompt sets, experiments, defaults.

Every error names the offending key path, e.g.
``catalog.yaml: experiments.demo.variants.base.model: unknown model 'gemma9' (known: ...)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from builders.graph.spec import StageSpec
    from transforms.models import QuantizationSpec

CATALOG_ENV = "TRAITSTORE_CATALOG"
DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "catalog.yaml"
STAGES = ("responses", "activations", "judgments", "vectors", "steering")


class CatalogError(Exception):
    """An invalid catalog or an unknown name; the message names the key."""


PLACEMENT_KEYS = ("device", "dtype", "device_map")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    id: str
    revision: str | None = None
    # placement (None = auto; see transforms/models/devices.py); a variant's own settings win
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    model: ModelEntry
    adapter: str | None = None  # a store reference to a LoRA adapter (later issues)
    # effective placement: the variant's keys, else its model's, else the --device /
    # --dtype override applied by Catalog.with_placement (None = auto)
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    # weight quantization (transforms/models/quantization.py); None = the model's dtype as is
    quantization: QuantizationSpec | None = None


@dataclass(frozen=True)
class PromptSetEntry:
    name: str
    path: Path
    trait: str | None = None


@dataclass(frozen=True)
class ExtractionConfig:
    """One row of an extraction matrix: vectors from ``prompt_set`` on ``variant`` at ``position``."""

    prompt_set: str
    variant: str
    position: str
    methods: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.prompt_set}/{self.variant}/{self.position}"


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: dict[str, Variant]
    prompt_sets: tuple[str, ...]
    description: str = ""
    extraction: tuple[ExtractionConfig, ...] = ()
    application: str | None = None  # the variant vectors are applied to when steering
    # named judge choices and the declared stage graph (builders.graph; python -m builders.run)
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, "StageSpec"] = field(default_factory=dict)


@dataclass
class Catalog:
    path: Path
    models: dict[str, ModelEntry]
    traits: dict[str, dict[str, Any]]
    prompt_sets: dict[str, PromptSetEntry]
    experiments: dict[str, Experiment]
    defaults: dict[str, Any] = field(default_factory=dict)

    def experiment(self, name: str | None = None) -> Experiment:
        name = name or self.defaults.get("experiment")
        if name not in self.experiments:
            raise CatalogError(f"{self.path.name}: unknown experiment {name!r} (known: {', '.join(self.experiments)})")
        return self.experiments[name]

    def variant(self, experiment: str | None, variant: str) -> Variant:
        exp = self.experiment(experiment)
        if variant not in exp.variants:
            raise CatalogError(
                f"{self.path.name}: experiments.{exp.name}: unknown variant {variant!r} "
                f"(known: {', '.join(exp.variants)})"
            )
        return exp.variants[variant]

    def prompt_set(self, name: str) -> PromptSetEntry:
        if name not in self.prompt_sets:
            raise CatalogError(f"{self.path.name}: unknown prompt set {name!r} (known: {', '.join(self.prompt_sets)})")
        return self.prompt_sets[name]

    def stage_defaults(self, stage: str) -> dict[str, Any]:
        return dict(self.defaults.get(stage, {}))

    def with_placement(self, device: str | None = None, dtype: str | None = None) -> "Catalog":
        """This catalog with ``--device`` / ``--dtype`` overriding every variant's setting
        (carried in the variants, so work units on other processes see them too)."""
        import dataclasses

        from transforms.models import check_device_name, check_dtype_name

        if device is None and dtype is None:
            return self
        change: dict[str, Any] = {}
        if device is not None:
            change["device"] = check_device_name(device)
        if dtype is not None:
            change["dtype"] = check_dtype_name(dtype)
        experiments = {
            name: dataclasses.replace(exp, variants={v: dataclasses.replace(var, **change)
                                                     for v, var in exp.variants.items()})
            for name, exp in self.experiments.items()
        }
        return dataclasses.replace(self, experiments=experiments)


def _mapping(value: Any, where: str, file: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(f"{file}: {where}: expected a mapping, got {type(value).__name__}")
    return value


def _string(entry: dict[str, Any], key: str, where: str, file: str, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise CatalogError(f"{file}: {where}.{key}: missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{file}: {where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str, file: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise CatalogError(f"{file}: {where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")


def _placement(entry: dict[str, Any], where: str, file: str) -> dict[str, str | None]:
    """The entry's ``device`` / ``dtype`` / ``device_map``, spelling checked (not availability:
    a catalog names GPUs that this machine may not have)."""
    from transforms.models import DeviceError, check_device_name, check_dtype_name

    out: dict[str, str | None] = {}
    for key, check in (("device", check_device_name), ("dtype", check_dtype_name), ("device_map", None)):
        value = _string(entry, key, where, file, required=False)
        if value is not None and check is not None:
            try:
                value = check(value)
            except DeviceError as err:
                raise CatalogError(f"{file}: {where}.{key}: {err}") from None
        out[key] = value
    return out


def _quantization(entry: dict[str, Any], where: str, file: str, adapter: str | None) -> "QuantizationSpec | None":
    """The variant's ``quantization: {method, bits}``, checked (not whether this machine can
    run it: that depends on the device a run resolves, see transforms.models.quantization)."""
    from transforms.models import parse_quantization

    try:
        spec = parse_quantization(entry.get("quantization"))
    except ValueError as err:
        raise CatalogError(f"{file}: {where}.quantization{err}") from None
    if spec is not None and spec.method == "bitsandbytes" and adapter:
        # bitsandbytes weights cannot take a merged LoRA delta; torchao quantizes after the merge
        raise CatalogError(f"{file}: {where}.quantization: bitsandbytes cannot merge the adapter into its "
                           f"quantized weights; use method: torchao")
    return spec


def _extraction(raw: Any, where: str, file: str, variants: dict[str, Variant],
                prompt_sets: dict[str, PromptSetEntry]) -> tuple[ExtractionConfig, ...]:
    if not isinstance(raw, list):
        raise CatalogError(f"{file}: {where}: expected a list of {{prompt_set, variant, position, methods}}")
    configs = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        item = _mapping(item, here, file)
        _check_keys(item, {"prompt_set", "variant", "position", "methods"}, here, file)
        prompt_set = _string(item, "prompt_set", here, file)
        if prompt_set not in prompt_sets:
            raise CatalogError(f"{file}: {here}.prompt_set: unknown prompt set {prompt_set!r}")
        variant = _string(item, "variant", here, file)
        if variant not in variants:
            raise CatalogError(f"{file}: {here}.variant: unknown variant {variant!r} (known: {', '.join(variants)})")
        methods = item.get("methods", ["mean_diff", "probe"])
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise CatalogError(f"{file}: {here}.methods: expected a non-empty list of method names")
        configs.append(ExtractionConfig(prompt_set, variant, _string(item, "position", here, file), tuple(methods)))
    return tuple(configs)


def _graph(entry: dict[str, Any], where: str, file: str, models: dict[str, ModelEntry], variants: dict[str, Variant],
           prompt_sets: dict[str, PromptSetEntry]) -> tuple[dict[str, dict[str, Any]], dict[str, "StageSpec"]]:
    """The experiment's named judges and its stages (:mod:`builders.graph.spec`)."""
    from builders.graph.spec import SpecError, parse_judges, parse_stages

    try:
        judges = parse_judges(entry.get("judges"), f"{where}.judges")
        for jname, judge in judges.items():
            reference = judge.get("reference")
            if reference is not None and reference not in models:
                raise SpecError(f"{where}.judges.{jname}.reference", f"unknown model {reference!r} (known: "
                                f"{', '.join(models)})")
        names = {"variant": set(variants), "prompt_set": set(prompt_sets), "judges": set(judges)}
        stages = parse_stages(entry.get("stages"), f"{where}.stages", names) if "stages" in entry else {}
    except SpecError as err:
        raise CatalogError(f"{file}: {err}") from None
    return judges, stages


def parse_catalog(data: Any, path: Path) -> Catalog:
    file = path.name
    root = _mapping(data, "top level", file)
    _check_keys(root, {"models", "traits", "prompt_sets", "experiments", "defaults"}, "top level", file)
    base = path.parent

    models = {}
    for name, entry in _mapping(root.get("models", {}), "models", file).items():
        entry = _mapping(entry, f"models.{name}", file)
        _check_keys(entry, {"id", "revision", "note", *PLACEMENT_KEYS}, f"models.{name}", file)
        models[name] = ModelEntry(name, _string(entry, "id", f"models.{name}", file),
                                  _string(entry, "revision", f"models.{name}", file, required=False),
                                  **_placement(entry, f"models.{name}", file))

    traits = {}
    for name, entry in _mapping(root.get("traits", {}), "traits", file).items():
        entry = _mapping(entry, f"traits.{name}", file)
        _check_keys(entry, {"definition", "sentiment", "note"}, f"traits.{name}", file)
        definition = _string(entry, "definition", f"traits.{name}", file)
        sentiment = _string(entry, "sentiment", f"traits.{name}", file, required=False) or "positive"
        if sentiment not in ("positive", "negative"):
            raise CatalogError(f"{file}: traits.{name}.sentiment: expected positive or negative, got {sentiment!r}")
        traits[name] = {"definition": base / definition, "sentiment": sentiment}

    prompt_sets = {}
    for name, entry in _mapping(root.get("prompt_sets", {}), "prompt_sets", file).items():
        entry = _mapping(entry, f"prompt_sets.{name}", file)
        _check_keys(entry, {"path", "trait", "note"}, f"prompt_sets.{name}", file)
        trait = _string(entry, "trait", f"prompt_sets.{name}", file, required=False)
        if trait is not None and trait not in traits:
            raise CatalogError(f"{file}: prompt_sets.{name}.trait: unknown trait {trait!r} (known: {', '.join(traits)})")
        prompt_sets[name] = PromptSetEntry(name, base / _string(entry, "path", f"prompt_sets.{name}", file), trait)

    experiments = {}
    for name, entry in _mapping(root.get("experiments", {}), "experiments", file).items():
        where = f"experiments.{name}"
        entry = _mapping(entry, where, file)
        _check_keys(entry, {"variants", "prompt_sets", "description", "extraction", "application", "judges",
                            "stages"}, where, file)
        variants = {}
        raw_variants = _mapping(entry.get("variants"), f"{where}.variants", file)
        if not raw_variants:
            raise CatalogError(f"{file}: {where}.variants: at least one variant is needed")
        for vname, ventry in raw_variants.items():
            vwhere = f"{where}.variants.{vname}"
            ventry = _mapping(ventry, vwhere, file)
            _check_keys(ventry, {"model", "adapter", "note", "quantization", *PLACEMENT_KEYS}, vwhere, file)
            model = _string(ventry, "model", vwhere, file)
            if model not in models:
                raise CatalogError(f"{file}: {vwhere}.model: unknown model {model!r} (known: {', '.join(models)})")
            own = _placement(ventry, vwhere, file)
            placement = {k: own[k] if own[k] is not None else getattr(models[model], k) for k in PLACEMENT_KEYS}
            adapter = _string(ventry, "adapter", vwhere, file, required=False)
            variants[vname] = Variant(vname, models[model], adapter, **placement,
                                      quantization=_quantization(ventry, vwhere, file, adapter))
        sets = entry.get("prompt_sets", [])
        if not isinstance(sets, list):
            raise CatalogError(f"{file}: {where}.prompt_sets: expected a list")
        for ps in sets:
            if ps not in prompt_sets:
                raise CatalogError(f"{file}: {where}.prompt_sets: unknown prompt set {ps!r} (known: {', '.join(prompt_sets)})")
        extraction = _extraction(entry.get("extraction", []), f"{where}.extraction", file, variants, prompt_sets)
        application = _string(entry, "application", where, file, required=False)
        if application is not None and application not in variants:
            raise CatalogError(f"{file}: {where}.application: unknown variant {application!r} (known: {', '.join(variants)})")
        judges, stages = _graph(entry, where, file, models, variants, prompt_sets)
        experiments[name] = Experiment(name, variants, tuple(sets), str(entry.get("description", "")),
                                       extraction, application, judges, stages)

    defaults = _mapping(root.get("defaults", {}), "defaults", file)
    _check_keys(defaults, {"experiment", *STAGES}, "defaults", file)
    if "experiment" in defaults and defaults["experiment"] not in experiments:
        raise CatalogError(f"{file}: defaults.experiment: unknown experiment {defaults['experiment']!r}")
    for stage in STAGES:
        _mapping(defaults.get(stage, {}), f"defaults.{stage}", file)
    return Catalog(path, models, traits, prompt_sets, experiments, defaults)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read ``--catalog`` / ``$TRAITSTORE_CATALOG`` / the repository's ``catalog.yaml``."""
    import yaml

    catalog_path = Path(path or os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG)
    try:
        text = catalog_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"catalog not found: {catalog_path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise CatalogError(f"{catalog_path.name}{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    return parse_catalog(data, catalog_path)
