"""The draw-a-digit page: a Starlette app (:func:`seqmnist.web.app.create_app`) that serves a trained
run's predictions and the page, its script and its style, all from this package (no network needed).
It needs the ``web`` extra: ``pip install 'seqmnist[web]'``."""
