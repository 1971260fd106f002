"""The schema's history: Alembic migrations (env.py, versions/), run by `newsletter.db`.

Foundation. Alembic loads these files by path (db.MIGRATIONS); this file only
makes the folder a package so the import contract sees what env.py imports
(newsletter.models, for the table metadata). May import: newsletter.models.
"""
