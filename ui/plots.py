"""pyqtgraph plots the console way: time on the x axis, no context menus or mouse panning (the graphs follow live
data), and pyqtgraph's menus parented to their plot, so they die with it instead of lingering as top-level windows."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget


def time_plot(parent: QWidget | None = None) -> pg.PlotWidget:
    """A PlotWidget with a date axis at the bottom, menus off, mouse off."""
    w = pg.PlotWidget(parent=parent, enableMenu=False, axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
    calm(w)
    return w


def calm(w: pg.PlotWidget) -> None:
    w.setMenuEnabled(False)
    w.setMouseEnabled(x=False, y=False)
    w.hideButtons()
    menu = getattr(w.getPlotItem(), "ctrlMenu", None)
    if menu is not None and menu.parent() is None:
        menu.setParent(w, menu.windowFlags())
