"""relais.agents."""
