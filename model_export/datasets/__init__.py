"""Dataset recipes: each turns a dataset folder into :class:`~model_export.datasets.base.Clip` lists."""
