"""The top-k index (Zeiler & Fergus, Fig. 2): the k strongest data-set activations of every unit.

"For each feature map we show the top 9 activations, each projected separately
down to pixel space" -- this package scans a data set once, keeps those k per
unit, stores them on disk and serves them (patches cropped by the receptive
field, projections through ``Net.project_many``).
"""
