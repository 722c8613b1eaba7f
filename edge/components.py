"""The components a box can run, built from its config: one explicit list, no registration by import."""

from __future__ import annotations

from collections.abc import Callable

from edge.component import Component, ComponentContext

__all__ = ["COMPONENTS", "ComponentFactory"]

ComponentFactory = Callable[[ComponentContext], Component | None]
"""Builds the component, or None when the config does not ask for it."""


def _catalogue(ctx: ComponentContext) -> Component | None:
    if ctx.config.catalogue.cloud_url is None:
        return None
    # Imported only when configured: a box without a catalogue does not pay for it in memory.
    from edge.catalogue.component import CatalogueComponent

    return CatalogueComponent(ctx)


def _config_push(ctx: ComponentContext) -> Component | None:
    from edge.config_push import config_push_component

    return config_push_component(ctx)


COMPONENTS: tuple[ComponentFactory, ...] = (_catalogue, _config_push)
