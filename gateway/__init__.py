"""relais.gateway: the partnership's hub. It routes, tracks and audits; it never decrypts.

Modules::

    router         policy enforcement on INGRESS: verify, rules, replay, fan-out or quarantine
    replay         the router's shared replay store (SEEN stream)
    tracker        receipts, deadlines, escalation, case closure (state in tracker_store)
    tracker_store  the tracker's SQLite database
    audit          audit records, hash chain, checkpoints, verification
    checkpoint     the single audit checkpointer
    delivery       what goes on DELIVERY (envelope copies, signed statements)
    jetstream      JetStream calls beyond the shared Connection
    policy         one directory edition and the rules, as enforced
    settings       the service's settings (TOML file, RELAIS_GATEWAY_* variables)
    service        run_gateway: the roles as asyncio tasks, signals, directory publication
    metrics        Prometheus metrics (codes only)

``python -m relais.gateway --config FILE`` runs the service (``relais gateway run`` too).
"""
