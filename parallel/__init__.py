"""How work is spread over devices and time: meshes, sharding, collectives, checkpointing."""
