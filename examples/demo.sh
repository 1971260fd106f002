#!/bin/sh
# Install newsletter into .venv and run the main job on the bundled sample:
# the sample contacts are imported, then the sample feed's stories are sent to
# every active subscriber as .eml files in demo/outbox (no SMTP server needed).
# Set NEWSLETTER_SMTP_URL (e.g. smtp://127.0.0.1:1025) to deliver to a local SMTP server instead.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check .
rm -rf demo && mkdir demo
export NEWSLETTER_FEED_URL="$PWD/examples/aasr-feed.xml"
export NEWSLETTER_DATABASE_URL="sqlite:///$PWD/demo/subscribers.db"
export NEWSLETTER_OUTBOX="$PWD/demo/outbox"
export NEWSLETTER_FROM="AASR <news@endseclusion.org>"
export NEWSLETTER_POSTAL_ADDRESS="Alliance Against Seclusion and Restraint, PO Box 0000, Anytown, ST 00000, USA"
cd demo
echo "== newsletter import examples/contacts.csv"
../.venv/bin/newsletter import ../examples/contacts.csv
echo
echo "== newsletter send"
../.venv/bin/newsletter send
echo
echo "== newsletter status"
../.venv/bin/newsletter status
