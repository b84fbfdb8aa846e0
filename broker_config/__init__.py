"""relais.broker_config: the partnership configuration (directory, rules, NATS config)."""
