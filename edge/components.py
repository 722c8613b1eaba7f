"""The components a box can run, built from its config: one explicit list, no registration by import."""

from __future__ import annotations

from collections.abc import Callable

from edge.component import Component, ComponentContext
from firmware_config.models import NodeConfig

__all__ = ["COMPONENTS", "ComponentFactory"]

ComponentFactory = Callable[[ComponentContext], Component | None]
"""Builds the component, or None when the config does not ask for it."""


def _catalogue(ctx: ComponentContext) -> Component | None:
    if ctx.config.catalogue.cloud_url is None:
        return None
    # Imported only when configured: a box without a catalogue does not pay for it in memory.
    from edge.catalogue.component import CatalogueComponent

    return CatalogueComponent(ctx)


def _station(ctx: ComponentContext) -> Component | None:
    if not ctx.config.station.enabled:
        return None
    from edge.station.component import StationComponent

    return StationComponent(ctx)


def _signage(ctx: ComponentContext) -> Component | None:
    if ctx.config.signage.cloud_url is None:
        return None
    from edge.signage.component import SignageComponent

    return SignageComponent(ctx)


def _orders(ctx: ComponentContext) -> Component | None:
    if not ctx.config.orders.enabled:
        return None
    from edge.orders.component import OrderDeskComponent

    return OrderDeskComponent(ctx)


def _config_push(ctx: ComponentContext) -> Component | None:
    from edge.config_push import config_push_component

    return config_push_component(ctx)


def clerks_enabled(cfg: NodeConfig) -> bool:
    """Clerks sign in on a box that says so, or by default on one with a station or an order desk."""
    if cfg.clerks.enabled is None:
        return cfg.station.enabled or cfg.orders.enabled
    return cfg.clerks.enabled


def _clerks(ctx: ComponentContext) -> Component | None:
    if not clerks_enabled(ctx.config):
        return None
    from edge.clerks.component import ClerksComponent

    return ClerksComponent(ctx)


def _kiosk(ctx: ComponentContext) -> Component | None:
    if not ctx.config.kiosk.enabled:
        return None
    from edge.kiosk.component import KioskComponent

    return KioskComponent(ctx)


COMPONENTS: tuple[ComponentFactory, ...] = (_catalogue, _station, _signage, _orders, _config_push, _clerks, _kiosk)
