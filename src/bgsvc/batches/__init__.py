"""Batches: many images submitted at once, one job per image, one zip of the results.

Built on :mod:`bgsvc.jobs`, never the other way round: batch records live in
:mod:`bgsvc.jobs.model` (the job stores persist them), and the job runner is handed
:func:`bgsvc.batches.service.item_finished` as a callback.
"""
