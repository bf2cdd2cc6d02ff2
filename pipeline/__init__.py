"""digest: topic-filtered email digests of research feeds.

Data flows through one module per stage: ``config`` -> ``fetch`` -> ``parse`` -> ``store`` ->
``match`` -> ``render`` -> ``compose`` -> ``deliver``; ``run`` chains them and is what both the
CLI (``cli``) and the scheduler (``schedule``) call.
"""

__version__ = "0.1.0"
