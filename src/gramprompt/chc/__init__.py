"""Cross-Modal Hierarchical Clustering: image-text pairs -> semantic topics -> visual domains.

Stages (``pipeline.py``): features (``features.py``, stored by ``store.py``), topics
(``topics.py``, named by Eq. 3 in ``topic_words.py``), domains (``domains.py``), output
(``hierarchy.py``, ``report.py``); per-shard and per-topic work runs on an ``executor.py``.
"""
import os

from gramprompt.data import cache_dir

# umap-learn and hdbscan compile with numba in every fresh process; a persistent cache saves part
# of it (some umap/pynndescent functions still compile, ~30 s per process measured). Workers inherit it.
os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
