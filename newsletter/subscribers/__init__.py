"""Contacts: who may be mailed, and every way in and out of the list.

Owns subscribers one by one (manage: add, remove, unsubscribe, list, export,
forget), web signup with double opt-in (signup) and its email (confirmation),
and CSV imports (importer) with the formats of other tools (csvformats: the
file's encoding, delimiter and columns; a new export format is a column map
there) and their rows read as contacts (csvrows).

May import: mail/, issues/ (the confirmation email goes the issue email's way)
and the foundation. Never sending/, bounces/, doctor/ (siblings) or the edges.
"""
