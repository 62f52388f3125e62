"""A toy method and a toy dataset, written by the README's *Add a method* and *Add a dataset* guides.

``tests/test_guides.py`` trains them through the command line, which loads them by ``class_path``
(``toys.toy_method.ToyHeatmapModule``, ``toys.toy_dataset.ToyHands``) from the ``tests`` folder on ``sys.path``.
"""
