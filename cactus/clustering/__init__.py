"""k-means (``kmeans``: over-relaxed Lloyd) and the CACTUs partitions built with it (``partitions``)."""
