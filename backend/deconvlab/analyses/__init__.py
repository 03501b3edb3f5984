"""The paper's analyses (Zeiler & Fergus 2013, Sec. 4-5), one file each.

=====================  =====================================================
module                 figure or table
=====================  =====================================================
``occlusion``          Fig. 7: occlusion sensitivity
``filters``            Fig. 6: first-layer filters, dead filters
``evolution``          Fig. 4: feature evolution during training
``invariance``         Fig. 5: invariance to translation, scale, rotation
``correspondence``     Table 1, Fig. 8: object-part correspondence
``ablation``           Table 3, Fig. 6: architecture variants
``transfer``           Table 4: features as a starting point for other data
=====================  =====================================================
"""
