"""The generators a worker can run, loaded once from the model registry by name and version."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from models.generator import Generator, GeneratorError, TrainedGenerator
from models.registry import ModelRegistry

KINDS = ("gan", "diffusion", "layout-diffusion", "procedural")
TRAINABLE = ("gan", "diffusion", "layout-diffusion")


def trainer(kind: str, image_size: int, channels: int, num_classes: int, *, dark_ink: bool = False,
            **overrides: Any) -> tuple[Callable[..., TrainedGenerator], Any]:
    """The training function of a trainable generator kind and its config for the data (``overrides``: steps, seed;
    ``dark_ink``: the data draws dark objects on light, which the layout model's object masks need to know).

    Raises:
        GeneratorError: ``kind`` is not trainable.
    """
    if kind == "gan":
        from models.gan import GanConfig, train_gan

        return train_gan, GanConfig.for_data(image_size, channels, num_classes, **overrides)
    if kind == "diffusion":
        from models.diffusion import DiffusionConfig, train_diffusion

        return train_diffusion, DiffusionConfig.for_data(image_size, channels, num_classes, **overrides)
    if kind == "layout-diffusion":
        from models.layout import LayoutConfig, train_layout

        return train_layout, LayoutConfig.for_data(image_size, channels, num_classes, dark_ink=dark_ink, **overrides)
    raise GeneratorError(f"unknown trainable generator {kind!r}; valid: {', '.join(TRAINABLE)}")


class GeneratorCatalog:
    """Loads each (generator, version) once; the procedural renderer needs no checkpoint."""

    def __init__(self, models_dir: Path, render: Any = None) -> None:
        """``render``: the procedural renderer's ``RenderConfig`` (size, channels and polarity of the real data)."""
        self.registry = ModelRegistry(models_dir)
        self.render = render
        self._loaded: dict[tuple[str, str | None], Generator] = {}

    def get(self, name: str, version: str | None = None) -> Generator:
        """The generator ``name`` at ``version`` (default: the latest trained).

        Raises:
            GeneratorError: unknown generator or version, or a checkpoint that fails its hash.
        """
        key = (name, version)
        if key in self._loaded:
            return self._loaded[key]
        if name not in KINDS:
            raise GeneratorError(f"unknown generator {name!r}; valid: {', '.join(KINDS)}")
        model: Any
        if name == "procedural":
            from models.render import ProceduralRenderer, RenderConfig

            model = ProceduralRenderer(self.render or RenderConfig())
            if version is not None and version != model.version:
                raise GeneratorError(f"procedural renderer is version {model.version}, not {version!r}")
        else:
            found, weights, config = self.registry.load_files(name, version)
            if name == "gan":
                from models.gan import GanModel

                model = GanModel.from_checkpoint(found, weights, config)
            elif name == "layout-diffusion":
                from models.layout import LayoutDiffusion

                model = LayoutDiffusion.from_checkpoint(found, weights, config)
            else:
                from models.diffusion import DiffusionModel

                model = DiffusionModel.from_checkpoint(found, weights, config)
        self._loaded[key] = model
        return model

    def put(self, model: Generator) -> None:
        """Register an in-memory model (tests, benchmarks) under its name and version."""
        self._loaded[(model.name, model.version)] = model
        self._loaded[(model.name, None)] = model
