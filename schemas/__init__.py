"""relais.schemas: the wire contract every partner shares.

Avro schemas and their registry, the sealed envelope and signed statements, the error tree.
"""
