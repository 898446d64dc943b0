"""The parts of the pytest plugin (:mod:`harness.testing.pytest_plugin`), one concept each.

* :mod:`~harness.testing.plugin.tree_peak` -- the process-tree RSS of one test
  body and the ``limit_rss`` verdict on it;
* :mod:`~harness.testing.plugin.bounded` -- ``assert_bounded``: a workload run at
  several slide sizes, each in a fresh process, and the growth of its peak.

Kept import-light (psutil, no numpy): pytest imports the plugin in every
session of every project that installs wsi-harness.
"""
