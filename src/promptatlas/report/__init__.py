"""Figures and tables: transfer heatmaps and tables (and the analysis figures)."""

from promptatlas.report.figures import annotated_heatmap, save_figure, subplots

__all__ = ["annotated_heatmap", "save_figure", "subplots"]
