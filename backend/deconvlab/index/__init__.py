"""The top-k index (Zeiler & Fergus, Fig. 2): the k strongest data-set activations of every unit.

"For each feature map we show the top 9 activations, each projected separately
down to pixel space" -- this package scans a data set once, keeps those k per
unit, stores them on disk and serves them (patches cropped by the receptive
field, projections through ``Net.project_many``).

For every unit of every paper layer (``conv1`` ... ``conv5``, ``fc6``, ``fc7``,
``fc8``; see :func:`deconvlab.nets.layer_map`) -- or, for any other CNN on the
graph engine (a ResNet, a user's module), of the layers :mod:`.scan_graph`
picks (the rectified maps and block outputs: a layer read only by a point-wise
op, a reshape or a residual sum is left to that reader) -- the index keeps the k images of
one split of an ImageFolder data set with the strongest activation, where an
image's activation is the *maximum over positions* of that unit's feature map
(fc units have one position). One entry per image per unit, so the k images of
a unit are distinct.

==============  ================================================================  ==========================
module          one job                                                           its public names
==============  ================================================================  ==========================
``scan``        a batch through the model: each unit's max per image, and where   ``LayerInfo``,
                (the one scan loop; the evolution analysis uses it too)           ``index_layers``, ``scan``,
                                                                                  ``scan_values``,
                                                                                  ``argmax_positions``
``scan_graph``  graph-engine nets: which layers, and the streaming fx run that    ``graph_index_layers``,
                frees each value after its last reader (hooks if untraceable)     ``stream``
``tracker``     the running top-k in fixed-shape arrays; exact merge              ``TopK``
``store``       the file format: manifest, atomic commit, staleness, where        ``default_index_path``,
                                                                                  ``StaleIndexError``,
                                                                                  ``model_sha256``
``build``       the build: DataLoader, torchrun shards (gloo/nccl), resume        ``build_index``,
                checkpoints                                                       ``shard_batches``
``serve``       a built index: entries, patches, projections, a byte-bounded      ``TopKIndex``,
                cache; open-or-build and the status strings of ``/api/ready``     ``open_index``,
                                                                                  ``index_status``,
                                                                                  ``open_or_build``
==============  ================================================================  ==========================

Dependencies point one way: scan_graph -> scan, tracker -> store -> build -> serve.
"""

from .build import build_index, shard_batches
from .scan import LayerInfo, argmax_positions, index_layers, layer_outputs, scan, scan_values
from .serve import TopKIndex, index_status, open_index, open_or_build
from .store import FORMAT, VERSION, StaleIndexError, default_index_path, model_sha256, sha_prefix_hex
from .tracker import TopK

__all__ = ["TopKIndex", "build_index", "default_index_path", "StaleIndexError", "index_status", "open_index",
           "open_or_build", "TopK", "LayerInfo", "index_layers", "layer_outputs", "scan", "scan_values",
           "argmax_positions", "shard_batches", "model_sha256", "sha_prefix_hex", "FORMAT", "VERSION"]
