"""relais.cli."""
