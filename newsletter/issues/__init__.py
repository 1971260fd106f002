"""Feed -> stories -> a frozen, rendered Issue.

Owns fetching and parsing the feed (fetch, feed; feedhints: the advice when an
address gives an HTML page or lacks its https://), cleaning its text and HTML
(sanitize, htmltext), the templates (templating), rendering an issue once
(render; the per-issue unsubscribe placeholder in placeholder) and freezing the
new stories into an Issue with one pending Delivery per active subscriber
(create).

May import: the foundation only (config, db, models, errors). Never mail/ or
anything above: mail/ builds on what is rendered here, not the other way round.
"""
