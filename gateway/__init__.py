"""relais.gateway."""
