"""newsletter: new RSS stories become one email to every subscriber (Story -> Issue -> Delivery).

Read the tree top to bottom as the data flows (docs/architecture.md has the
whole picture); imports only go down, and `lint-imports` checks it:

    cli/, web/        edges: parse input, print or render, map errors
    status            the read-only report across packages
    sending/ | subscribers/ | bounces/ | doctor/    services, none imports another
    mail/             one message: compose, sign, envelope, transport
    issues/           feed -> stories -> a frozen, rendered Issue
    db, migrations, config, models, errors          foundation
"""
