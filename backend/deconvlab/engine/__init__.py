"""The deconvnet engine: Sec. 2.1 of Zeiler & Fergus (2013) and nothing else.

No data sets, no HTTP, no files: tensors in, tensors out.

=======================  ==========================================================
module                   what it is
=======================  ==========================================================
``switches``             the forward record: activations and max-pool switches
``deconvnet``            the backward rules (deconv, guided, backprop), seeds, windows
``sparse_step``          unpool + rectify + filter as one sparse step (CPU, Numba)
``receptive_field``      layer geometry: windows and input boxes
=======================  ==========================================================
"""
