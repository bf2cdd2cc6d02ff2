"""The reader-facing web app, ``digest serve``: links that act on a reader's own choices.

Every page is a Flask blueprint in a module of its own (``unsubscribe``, ``preferences``, and
the modules other features add); :func:`pipeline.web.app.create_app` registers every module
of this package that defines a ``blueprint``. Links are capabilities: HMAC-signed tokens per
subscriber and purpose (:mod:`.tokens`), built only from ``[digest] base_url`` (:mod:`.links`).
No cookies, no login, no JavaScript. Forms are protected against cross-site requests by a
signed, timed form token and a same-origin check (:mod:`.forms`), not by a cookie.

This package's ``__init__`` imports nothing heavy: ``compose`` and ``render`` sign links
through :mod:`.links` without loading Flask.
"""
