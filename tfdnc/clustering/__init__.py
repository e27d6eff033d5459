"""Clustering for Divide & Conquer: k-means, the TPAMI constraint, identity, growth.

Every `T` epochs the training set is re-embedded and re-clustered
(`cluster_balanced`), the new clusters inherit the ids of the old ones they
overlap most (`match_clusters`), or, while K grows, every cluster is split
in two (`split_clusters`). Images whose class has a single image in their
cluster are left out until the next re-clustering (`usable_mask`). Which K,
and when, is decided elsewhere (`tfdnc.training.phases.PhasePolicy`); these
functions only cluster.

Modules, one concept each:

- `backends`: `kmeans` on all points (faiss, or scikit-learn);
- `balanced`: `cluster_balanced` (k-means retried, then repaired, until every
  cluster holds 2 classes of 2 images), `usable_mask`, `cluster_stats`,
  `max_feasible_k`;
- `matching`: `match_clusters` (Hungarian matching), `matching_cost`;
- `splits`: `split_clusters` (2-means per cluster, K doubles);
- `validation`: the argument checks and `ClusteringError`.

Example:

```python
assignments = cluster_balanced(features, labels, k=8, seed=epoch)
ids = match_clusters(assignments, previous, k_new=8, k_old=8)
assignments = ids[assignments]          # new cluster i takes old id ids[i]
keep = usable_mask(assignments, labels)  # images the sampler may draw
children = split_clusters(features, labels, assignments, k=8)  # K = 16
```
"""

from tfdnc.clustering.backends import BACKENDS, kmeans
from tfdnc.clustering.balanced import (ON_FAILURE, ClusterStats, cluster_balanced, cluster_stats, max_feasible_k,
                                       usable_mask)
from tfdnc.clustering.matching import match_clusters, matching_cost
from tfdnc.clustering.splits import split_clusters
from tfdnc.clustering.validation import ClusteringError

__all__ = [
    "BACKENDS",
    "ON_FAILURE",
    "ClusteringError",
    "ClusterStats",
    "kmeans",
    "cluster_balanced",
    "cluster_stats",
    "usable_mask",
    "matching_cost",
    "match_clusters",
    "split_clusters",
    "max_feasible_k",
]
