"""Batches: many images submitted at once, one job per image, one zip of the results.

Kept free of imports so that the job store can use :mod:`bgsvc.batches.model` while
:mod:`bgsvc.batches.submit` uses the job queue.
"""
